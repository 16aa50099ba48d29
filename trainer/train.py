"""The training pipeline: load, split, fit, evaluate, export, index, publish."""

import dataclasses
import datetime
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from candidate_service.history import UserHistory
from candidate_service.index import CandidateIndex, exact_search, recall_at_k
from model_store import contract, digest, layout
from trainer import (
    distribute,
    evaluation,
    export,
    features,
    movielens,
    splits,
)
from trainer.config import TUTORIAL, TrainConfig
from trainer.model import (
    PER_USER_LOSSES,
    TOP_KS,
    CandidateTower,
    QueryTower,
    RetrievalModel,
    TwoTowerModel,
)
from trainer.warmup import write_warmup_requests

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


@dataclasses.dataclass(frozen=True)
class FitResult:
    """A model fitted on one split, and how it got there.

    Attributes:
      model: the trained model; its `query_tower` and `candidate_tower`
        follow the serving contract.
      epochs: epochs of the final fit, on all training ratings.
      validation: one dict per epoch of the early-stopping run (`epoch`,
        `loss`, `recall_10`, `ndcg_10`, `top_10`, `top_100`, `seconds`),
        validation metrics of the model fitted without the validation
        ratings; empty without early stopping.
      seconds: wall time of all fitting, early-stopping run included.
    """

    model: keras.Model
    epochs: int
    validation: list[dict[str, float]]
    seconds: float


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
    top-k metrics, which are deliberately not computed while fitting.

    About ten epochs of a run are logged at INFO, the rest at DEBUG: the
    per-user loss runs a hundred short epochs.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        total = self.params["epochs"]
        shown = (epoch + 1) % max(1, total // 10) == 0 or epoch + 1 == total
        _log.log(
            logging.INFO if shown else logging.DEBUG,
            "epoch %d/%d: loss %.4g (%.1f s)",
            epoch + 1,
            self.params["epochs"],
            (logs or {}).get("loss", float("nan")),
            time.monotonic() - self._started,
        )


class _ValidationMonitor(keras.callbacks.Callback):
    """Scores the towers on validation ratings after each epoch; with a
    patience, stops when Recall@10 has not improved for that many epochs.

    Known cost: every validation user is ranked against the whole catalogue
    each epoch, a fraction of a second on MovieLens 100K but minutes per
    epoch on ml-25m; there, sample the validation users.
    """

    def __init__(
        self,
        interactions: evaluation.Interactions,
        seen: evaluation.UserMovies,
        positions: np.ndarray,
        patience: int,
    ):
        super().__init__()
        self._interactions = interactions
        self._seen = seen
        self._held_out = interactions.matrix(positions)
        self._positions = positions
        self._patience = patience
        self.history: list[dict[str, float]] = []
        self._started = time.monotonic()

    @property
    def best_epoch(self) -> int:
        """1-based epoch of the best validation Recall@10 so far."""
        return 1 + int(np.argmax([h["recall_10"] for h in self.history]))

    def on_epoch_end(self, epoch, logs=None):
        scorer = tower_scorer(self.model, self._interactions)
        serving = evaluation.ranking_quality(
            scorer, self._seen, self._held_out
        ).metrics()
        tutorial = evaluation.top_k_accuracy(
            scorer,
            self._interactions.user_rows[self._positions],
            self._interactions.movie_rows[self._positions],
            ks=(10, 100),
        )
        self.history.append(
            {
                "epoch": epoch + 1,
                "loss": float((logs or {}).get("loss", float("nan"))),
                **serving,
                **tutorial,
                "seconds": time.monotonic() - self._started,
            }
        )
        _log.debug(
            "validation after epoch %d: recall@10 %.4f, top-100 %.4f",
            epoch + 1,
            serving["recall_10"],
            tutorial["top_100"],
        )
        if self._patience and epoch + 1 - self.best_epoch >= self._patience:
            self.model.stop_training = True


def tower_scorer(
    model: keras.Model, interactions: evaluation.Interactions
) -> evaluation.Scorer:
    """Scores users against the catalogue by the towers' dot product."""
    users = export.embed(
        model.query_tower, _as_strings(interactions.user_ids).tolist()
    )
    movies = export.embed(
        model.candidate_tower, _as_strings(interactions.movie_ids).tolist()
    )
    return evaluation.embedding_scorer(users, movies)


def build_model(
    dataset: movielens.Dataset,
    interactions: evaluation.Interactions,
    positions: np.ndarray,
    config: TrainConfig,
) -> keras.Model:
    """The untrained model `config` describes, its feature tables built
    from the ratings at `positions` only.

    Raises:
      ValueError: the config's settings do not fit together.
    """
    user_ids = _as_strings(interactions.user_ids).tolist()
    movie_ids = _as_strings(interactions.movie_ids).tolist()
    if config.model == TUTORIAL:
        return TwoTowerModel(user_ids, movie_ids, config.embedding_dim)

    seen = interactions.matrix(positions)
    query_tower = QueryTower(
        user_ids,
        config.embedding_dim,
        interactions.num_movies,
        history=features.HistoryTable.from_matrix(seen)
        if config.history
        else None,
        user_embedding=config.user_embedding,
        item_bias=config.item_bias,
    )
    candidate_tower = CandidateTower(
        movie_ids,
        config.embedding_dim,
        features=features.movie_features(dataset, interactions.movie_ids)
        if config.movie_features
        else None,
        item_bias=config.item_bias,
    )
    # Each lookup row's share of the training ratings (row 0, unknown
    # movies, never occurs), for the logQ correction.
    counts = np.bincount(
        interactions.movie_rows[positions] + 1,
        minlength=interactions.num_movies + 1,
    )
    return RetrievalModel(
        query_tower,
        candidate_tower,
        loss=config.loss,
        temperature=config.temperature,
        movie_frequency=counts / max(counts.sum(), 1)
        if config.logq_correction
        else None,
        remove_accidental_hits=config.remove_accidental_hits,
        history_dropout=config.history_dropout,
    )


def _optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=config.learning_rate)
    return keras.optimizers.Adam(
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay or None,
    )


def _train(
    dataset: movielens.Dataset,
    interactions: evaluation.Interactions,
    positions: np.ndarray,
    config: TrainConfig,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
) -> keras.Model:
    """Builds and fits a model on the ratings at `positions`."""
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.strategy_for(config.distribution)
    with strategy.scope():
        model = build_model(dataset, interactions, positions, config)
        model.compile(optimizer=_optimizer(config))
    if config.model != TUTORIAL and config.loss in PER_USER_LOSSES:
        # One example per user who has training ratings.
        users = np.unique(interactions.user_rows[positions])
        examples = tf.data.Dataset.from_tensor_slices(
            {"user_id": _as_strings(interactions.user_ids[users])}
        )
    else:
        examples = _ratings_dataset(dataset.ratings, positions)
    # batch_size is per replica; Keras splits each global batch.
    examples = examples.shuffle(
        len(examples), seed=config.seed, reshuffle_each_iteration=True
    ).batch(config.batch_size * strategy.num_replicas_in_sync)
    if config.model == TUTORIAL:
        # As the tutorial does: caching after the shuffle replays the first
        # epoch's order in every epoch.
        examples = examples.cache()
    model.fit(
        examples.prefetch(2),
        epochs=epochs,
        verbose=0,
        callbacks=[_EpochLog(), *callbacks],
    )
    return model


def validation_curve(
    dataset: movielens.Dataset,
    interactions: evaluation.Interactions,
    split: splits.Split,
    config: TrainConfig,
) -> list[dict[str, float]]:
    """Fits on `split.fit` and scores `split.validation` after each epoch.

    Training stops early when the config's patience runs out (a patience
    of 0 runs all `config.epochs`).

    Returns:
      One dict per epoch: `epoch`, `loss`, validation `recall_10`,
      `recall_50`, `recall_100`, `ndcg_10` (serving protocol), `top_10`,
      `top_100` (tutorial protocol) and `seconds` since the start.
    """
    monitor = _ValidationMonitor(
        interactions,
        interactions.matrix(split.fit),
        split.validation,
        config.early_stopping_patience,
    )
    _train(dataset, interactions, split.fit, config, config.epochs, [monitor])
    return monitor.history


def fit_split(
    dataset: movielens.Dataset,
    interactions: evaluation.Interactions,
    split: splits.Split,
    config: TrainConfig,
) -> FitResult:
    """Trains the towers on `split.train`, picking the number of epochs on
    `split.validation` first when the config asks for early stopping.

    Early stopping runs `validation_curve` and then refits from scratch on
    all of `split.train` for the epoch with the best validation Recall@10,
    so that the final model sees every training rating. `split.test` is
    not read.

    Raises:
      ValueError: the config's settings do not fit together.
    """
    started = time.monotonic()
    epochs, validation = config.epochs, []
    if config.early_stopping_patience and config.model != TUTORIAL:
        validation = validation_curve(dataset, interactions, split, config)
        best = max(validation, key=lambda h: h["recall_10"])
        epochs = best["epoch"]
        _log.info(
            "best validation recall@10 %.4f after epoch %d of %d; refitting "
            "on all %d training ratings",
            best["recall_10"],
            epochs,
            len(validation),
            len(split.train),
        )
    model = _train(dataset, interactions, split.train, config, epochs, [])
    seconds = time.monotonic() - started
    _log.info("trained in %.1f s", seconds)
    return FitResult(model, epochs, validation, seconds)


def fit(dataset: movielens.Dataset, config: TrainConfig):
    """Trains the two towers on a random split of the ratings.

    The split holds out `config.test_fraction` of the ratings at random
    (seeded by `config.seed`); the early-stopping validation ratings, when
    used, come out of the training part.

    Returns:
      (model, test_metrics): the trained model (`query_tower` and
      `candidate_tower` follow the serving contract) and its top-k accuracy
      over the whole catalogue on the held-out ratings, `top_1` ...
      `top_100` (the tutorial protocol of `trainer.evaluation`).

    Raises:
      ValueError: the config's settings do not fit together, or the
        ratings name movies missing from the catalogue.
    """
    interactions = evaluation.Interactions.from_dataset(dataset)
    split = splits.make_split(
        splits.RANDOM,
        dataset.ratings.user_id,
        dataset.ratings.timestamp,
        config.test_fraction,
        config.validation_fraction,
        config.seed,
    )
    _log.info(
        "training on %d ratings, testing on %d (%d users, %d movies)",
        len(split.train),
        len(split.test),
        interactions.num_users,
        interactions.num_movies,
    )
    model = fit_split(dataset, interactions, split, config).model

    metrics = evaluation.top_k_accuracy(
        tower_scorer(model, interactions),
        interactions.user_rows[split.test],
        interactions.movie_rows[split.test],
        ks=TOP_KS,
    )
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
        write_warmup_requests(
            staged / layout.QUERY, check_users[:_WARMUP_USERS]
        )

        index = CandidateIndex.build(movie_ids, titles, embeddings)
        index.save(staged / layout.INDEX)
        UserHistory.build(
            dataset.ratings.user_id, dataset.ratings.movie_id, movie_ids
        ).save(staged / layout.INDEX)
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
            "checksums": digest.tree_sha256(staged / layout.INDEX),
        }
        (staged / layout.INDEX / layout.MANIFEST).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        if not distribute.is_chief(
            distribute.strategy_for(config.distribution)
        ):
            # Every worker of a multi-worker run trains the same model; one
            # publishes it.
            _log.info("trained as a non-chief worker; the chief publishes")
            return TrainResult(
                version=version,
                paths=layout.VersionPaths(models_dir, version),
                manifest=manifest,
            )
        paths = layout.publish(staged, models_dir, version)
    finally:
        # publish() removes the folder itself; this covers a failed check.
        shutil.rmtree(staged, ignore_errors=True)
    return TrainResult(version=version, paths=paths, manifest=manifest)
