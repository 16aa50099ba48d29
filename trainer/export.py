"""Exports the towers as SavedModels that TF Serving can load.

Each tower is saved on its own with one signature, `serving_default`, taking a
1-D string tensor of ids and returning float32 embeddings `[batch, dim]`. The
query tower holds nothing but its own lookups and layers (no ScaNN ops), so
the stock `tensorflow_model_server` can serve it.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from model_store import contract

MOVIE_ID_KEY = "movie_id"


class _Exported(tf.Module):
    """Wraps a tower so the SavedModel holds only what serving needs."""

    def __init__(self, tower: keras.Model):
        super().__init__()
        self.tower = tower


def _save(tower: keras.Model, path: Path, input_key: str) -> None:
    module = _Exported(tower)

    # The argument's name becomes the signature's input key.
    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name=input_key)]
    )
    def serve(ids):
        return {contract.EMBEDDING_KEY: module.tower(ids)}

    tf.saved_model.save(
        module,
        str(path),
        signatures={contract.SERVING_SIGNATURE: serve},
    )


def save_query_tower(tower: keras.Model, path: Path) -> None:
    """Saves the query tower in TF Serving's layout (`<path>` is the version
    directory): input `user_id` string `[-1]`, output `embedding` float32
    `[-1, dim]`."""
    _save(tower, Path(path), contract.USER_ID_KEY)


def save_candidate_tower(tower: keras.Model, path: Path) -> None:
    """Saves the candidate tower: input `movie_id` string `[-1]`, output
    `embedding` float32 `[-1, dim]`."""
    _save(tower, Path(path), MOVIE_ID_KEY)


def embed(tower: keras.Model, ids: list[str], batch_size: int = 4096):
    """Runs a tower over ids in batches.

    Returns:
      float32 `[len(ids), dim]`, row i the embedding of ids[i].
    """
    parts = [
        tower(tf.constant(ids[i : i + batch_size])).numpy()
        for i in range(0, len(ids), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32, copy=False)


def load_signature(path: Path):
    """Loads a saved tower's serving signature.

    Returns:
      A function taking a string tensor `[batch]` by its input key and
      returning `{"embedding": float32 [batch, dim]}`.
    """
    return tf.saved_model.load(str(path)).signatures[
        contract.SERVING_SIGNATURE
    ]
