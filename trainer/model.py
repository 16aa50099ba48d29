"""The two-tower retrieval model.

A query tower maps a user id to an embedding and a candidate tower maps a
movie id to one; their dot product scores the pair. Trained with TensorFlow
Recommenders' `Retrieval` task: every rating is a positive, and the other
movies in the batch are its negatives.
"""

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

TOP_KS = (1, 5, 10, 50, 100)


def id_tower(
    vocabulary: Sequence[str], embedding_dim: int, name: str
) -> keras.Model:
    """An embedding table keyed by string id.

    Args:
      vocabulary: every known id, as strings.
      embedding_dim: output width.
      name: the Keras model's name.

    Returns:
      A model mapping string ids `[batch]` to float32 `[batch, embedding_dim]`.
      Ids outside the vocabulary share one extra row.
    """
    return keras.Sequential(
        [
            keras.layers.StringLookup(vocabulary=list(vocabulary)),
            keras.layers.Embedding(len(vocabulary) + 1, embedding_dim),
        ],
        name=name,
    )


class TwoTowerModel(tfrs.Model):
    """User id and movie id towers trained for retrieval.

    Batches are dicts with string tensors `user_id` and `movie_id` of shape
    `[batch]`.
    """

    def __init__(
        self,
        user_ids: Sequence[str],
        movie_ids: Sequence[str],
        embedding_dim: int,
    ):
        super().__init__()
        self.query_tower = id_tower(user_ids, embedding_dim, "query_tower")
        self.candidate_tower = id_tower(
            movie_ids, embedding_dim, "candidate_tower"
        )
        candidates = tf.data.Dataset.from_tensor_slices(list(movie_ids))
        self.task = tfrs.tasks.Retrieval(
            metrics=tfrs.metrics.FactorizedTopK(
                candidates=candidates.batch(512).map(self.candidate_tower),
                ks=TOP_KS,
            )
        )

    def compute_loss(self, features, training=False):
        query = self.query_tower(features["user_id"])
        candidate = self.candidate_tower(features["movie_id"])
        # Top-k over the whole catalogue per batch is the expensive part of a
        # step; it is only wanted when evaluating, not while fitting.
        return self.task(
            query,
            candidate,
            compute_metrics=not training,
            compute_batch_metrics=not training,
        )


def top_k_metrics(results: dict[str, float]) -> dict[str, float]:
    """Renames Keras' evaluation results to `top_1` ... `top_100`."""
    return {
        f"top_{k}": float(
            results[f"factorized_top_k/top_{k}_categorical_accuracy"]
        )
        for k in TOP_KS
    }
