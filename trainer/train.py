"""The training pipeline: load, split, fit, evaluate, export, index, publish."""

import dataclasses
import datetime
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from candidate_service.index import CandidateIndex, exact_search, recall_at_k
from model_store import contract, layout
from trainer import export, movielens
from trainer.config import TrainConfig
from trainer.model import TwoTowerModel, top_k_metrics
from trainer.splits import random_split

_log = logging.getLogger(__name__)

# How many users' query embeddings check the exported model and the index.
_CHECK_USERS = 1000
# Users whose queries the candidate service sends to warm a version up.
_WARMUP_USERS = 8
# Largest k the recall gate checks; the catalogue may be smaller.
_RECALL_K = 10


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run published."""

    version: int
    paths: layout.VersionPaths
    manifest: dict


def _as_strings(ids: np.ndarray) -> np.ndarray:
    return ids.astype(np.int64).astype(str).astype(object)


def _ratings_dataset(ratings, positions: np.ndarray) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {
            "user_id": _as_strings(ratings.user_id[positions]),
            "movie_id": _as_strings(ratings.movie_id[positions]),
        }
    )


class _EpochLog(keras.callbacks.Callback):
    """Logs each epoch's loss; Keras' own progress bar would also print the
    top-k metrics, which are deliberately not computed while fitting."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        _log.info(
            "epoch %d/%d: loss %.1f (%.1f s)",
            epoch + 1,
            self.params["epochs"],
            (logs or {}).get("loss", float("nan")),
            time.monotonic() - self._started,
        )


def fit(dataset: movielens.Dataset, config: TrainConfig):
    """Trains the two towers on a random split of the ratings.

    Returns:
      (model, test_metrics): the trained `TwoTowerModel` and its top-k
      accuracy over the whole catalogue on the held-out ratings.
    """
    keras.utils.set_random_seed(config.seed)
    ratings = dataset.ratings
    train, test = random_split(
        len(ratings.user_id), config.test_fraction, config.seed
    )
    user_ids = _as_strings(np.unique(ratings.user_id)).tolist()
    movie_ids = _as_strings(np.array(sorted(dataset.movies))).tolist()
    _log.info(
        "training on %d ratings, testing on %d (%d users, %d movies)",
        len(train),
        len(test),
        len(user_ids),
        len(movie_ids),
    )

    model = TwoTowerModel(user_ids, movie_ids, config.embedding_dim)
    model.compile(
        optimizer=keras.optimizers.Adagrad(learning_rate=config.learning_rate)
    )
    train_ds = (
        _ratings_dataset(ratings, train)
        .shuffle(len(train), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .cache()
    )
    started = time.monotonic()
    model.fit(
        train_ds, epochs=config.epochs, verbose=0, callbacks=[_EpochLog()]
    )
    _log.info("trained in %.1f s", time.monotonic() - started)

    results = model.evaluate(
        _ratings_dataset(ratings, test).batch(4096),
        return_dict=True,
        verbose=0,
    )
    metrics = top_k_metrics(results)
    _log.info(
        "test top-k accuracy: %s",
        ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
    )
    return model, metrics


def _check_export(tower, saved_dir: Path, user_ids: list[str]) -> None:
    """Fails if the exported query tower disagrees with the trained one."""
    served = export.load_signature(saved_dir)(
        **{contract.USER_ID_KEY: tf.constant(user_ids)}
    )[contract.EMBEDDING_KEY].numpy()
    trained = export.embed(tower, user_ids)
    if not np.allclose(served, trained, atol=1e-5):
        raise layout.PublishError(
            f"exported query tower in {saved_dir} disagrees with the trained "
            f"one (max difference {np.abs(served - trained).max():.2e})"
        )


def _index_recall(index, embeddings, queries) -> float:
    k = min(_RECALL_K, index.size)
    found, _ = index.search(queries, k)
    exact, _ = exact_search(embeddings, queries, k)
    return recall_at_k(found, index.movie_ids[exact], k)


def _file_checksums(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(
            path.read_bytes()
        ).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def train_and_publish(
    dataset: movielens.Dataset,
    models_dir: Path,
    config: TrainConfig = TrainConfig(),
    version: int | None = None,
    min_index_recall: float = 0.95,
) -> TrainResult:
    """Trains a model and publishes it as a new version under `models_dir`.

    The version is built in a staging folder and checked there (the exported
    query tower against the trained one, the index's recall@10 against exact
    search on real users' queries); only then is it moved into place. Nothing
    already published changes if any step fails.

    Raises:
      layout.PublishError: a check failed or the version already exists.
    """
    models_dir = Path(models_dir)
    version = version or layout.next_version(models_dir)
    model, metrics = fit(dataset, config)

    movie_ids = np.array(sorted(dataset.movies), dtype=np.int64)
    titles = [dataset.movies[m].title for m in movie_ids.tolist()]
    embeddings = export.embed(
        model.candidate_tower, _as_strings(movie_ids).tolist()
    )
    users = _as_strings(np.unique(dataset.ratings.user_id)).tolist()
    check_users = [
        users[i]
        for i in np.random.default_rng(config.seed).choice(
            len(users), size=min(_CHECK_USERS, len(users)), replace=False
        )
    ]

    staged = layout.staging_dir(models_dir)
    try:
        export.save_query_tower(model.query_tower, staged / layout.QUERY)
        export.save_candidate_tower(
            model.candidate_tower, staged / layout.CANDIDATE
        )
        _check_export(model.query_tower, staged / layout.QUERY, check_users)

        index = CandidateIndex.build(movie_ids, titles, embeddings)
        index.save(staged / layout.INDEX)
        queries = export.embed(model.query_tower, check_users)
        recall = _index_recall(index, embeddings, queries)
        _log.info(
            "index: %s over %d candidates, recall@%d %.4f against exact "
            "search on %d users",
            index.config.method,
            index.size,
            _RECALL_K,
            recall,
            len(check_users),
        )
        if recall < min_index_recall:
            raise layout.PublishError(
                f"index recall@{_RECALL_K} {recall:.4f} is below the "
                f"required {min_index_recall}; not publishing version "
                f"{version}"
            )

        manifest = {
            "version": version,
            "created_at": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"),
            "dataset": {
                "name": dataset.name,
                "sha256": dataset.sha256,
                "num_ratings": int(len(dataset.ratings.user_id)),
            },
            "dimension": int(embeddings.shape[1]),
            "num_candidates": int(index.size),
            "num_users": len(users),
            "train_config": dataclasses.asdict(config),
            "metrics": metrics,
            "index": {
                "method": index.config.method,
                "config": index.config.to_dict(),
                f"recall_at_{_RECALL_K}": recall,
            },
            "warmup_user_ids": check_users[:_WARMUP_USERS],
            "checksums": _file_checksums(staged / layout.INDEX),
        }
        (staged / layout.INDEX / layout.MANIFEST).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        paths = layout.publish(staged, models_dir, version)
    finally:
        # publish() removes the folder itself; this covers a failed check.
        shutil.rmtree(staged, ignore_errors=True)
    return TrainResult(version=version, paths=paths, manifest=manifest)
