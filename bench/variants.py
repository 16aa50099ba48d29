"""Changes to the shipped model that were tried on validation and dropped.

`bench.quality`'s ablation is the path to `TrainConfig()`'s defaults; this
is the record of what was tried after it, so that the next engineer can
rerun an idea rather than retry it blind. Each variant changes one idea in
the default model, through `TrainConfig` fields or one method of the towers
or the loss (patched for the run, restored after), and is trained as the
ablation's steps are: on the random split's fit ratings (seed 42), scored
on its validation ratings after each epoch, stopped early (the cosine
schedules run to their end instead). The default runs first, as the
reference.

Each row reports the best epoch's Recall@10 and top-10 accuracy, and the
mean Recall@10 over the epochs around the best (`bench.quality`'s
window). The second matters: the best of a hundred noisy epochs flatters
(see quality.md), and a variant whose window is higher would be worth a
seed check even if its peak is not.

The last section blends the default's scores with EASE's (both fitted on
the fit ratings): whether an item-item model served beside the towers
would lift Recall@10 at all. EASE's lambda and the blend's weight are both
picked on the same validation ratings, so its best row is optimistic.

    make bench-variants
    .venv/bin/python -m bench.variants --data-dir ../shared/data/ml-100k \\
        --out bench/results/variants.json
"""

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from bench.quality import (  # noqa: E402
    AROUND_BEST,
    SEED_CHECK_SEEDS,
    Settings,
    SplitData,
    mean_around_best,
)

_log = logging.getLogger("bench.variants")

DEFAULT_OUT = Path("bench/results/variants.json")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One change to the default model.

    Attributes:
      name: short key, unique.
      change: what it changes, for the table.
      config: `TrainConfig` fields to override.
      patch: given the run's data and config, a context manager that
        patches the model's code while it is entered.
    """

    name: str
    change: str
    config: dict = dataclasses.field(default_factory=dict)
    patch: (
        Callable[[SplitData, object], contextlib.AbstractContextManager] | None
    ) = None


@contextlib.contextmanager
def _patched(cls, add_layers=None, **methods):
    """While entered, `cls.__init__` also runs add_layers(self) and
    `methods` replace the class's own."""
    with contextlib.ExitStack() as stack:
        if add_layers is not None:
            init = cls.__init__

            def patched_init(self, *args, **kwargs):
                init(self, *args, **kwargs)
                add_layers(self)

            stack.enter_context(
                mock.patch.object(cls, "__init__", patched_init)
            )
        for name, method in methods.items():
            stack.enter_context(mock.patch.object(cls, name, method))
        yield


def _history_count(rows, entry_rows, shown):
    """float32 `[batch, 1]`: how many history movies each query shows."""
    import tensorflow as tf

    batch = tf.shape(rows, out_type=tf.int64)[0]
    count = tf.math.unsorted_segment_sum(shown, entry_rows, batch)
    return tf.maximum(count, 1.0)[:, None]


@contextlib.contextmanager
def _pooled_by_power(data, config, power: float):
    """The history summed and divided by n**power instead of n."""
    from trainer.model import QueryTower

    mean = QueryTower._history_mean

    def pooled(self, rows, entry_rows, movies, shown):
        count = _history_count(rows, entry_rows, shown)
        history = mean(self, rows, entry_rows, movies, shown)
        return history * count ** (1.0 - power)

    with _patched(QueryTower, _history_mean=pooled):
        yield


@contextlib.contextmanager
def _length_scale(data, config):
    """The mean history scaled by exp(a log(1 + n) + b), a and b learned
    (from 0): lets the query's length, and so the weight of the movies'
    biases against it, depend on how much of the history is shown."""
    import tensorflow as tf

    from trainer.model import QueryTower

    mean = QueryTower._history_mean

    def add_layers(self):
        self.length_slope = self.add_weight(
            name="length_slope", shape=(), initializer="zeros"
        )
        self.length_offset = self.add_weight(
            name="length_offset", shape=(), initializer="zeros"
        )

    def pooled(self, rows, entry_rows, movies, shown):
        count = _history_count(rows, entry_rows, shown)
        scale = tf.exp(
            self.length_slope * tf.math.log1p(count) + self.length_offset
        )
        return mean(self, rows, entry_rows, movies, shown) * scale

    with _patched(QueryTower, add_layers, _history_mean=pooled):
        yield


@contextlib.contextmanager
def _query_mlp(data, config):
    """A residual tanh layer of 256 on the mean history (output layer
    started at zero, so the run starts as the default)."""
    import tf_keras as keras

    from trainer.model import QueryTower

    mean = QueryTower._history_mean

    def add_layers(self):
        width = self.history_embedding.output_dim
        self.mlp_hidden = keras.layers.Dense(256, activation="tanh")
        self.mlp_out = keras.layers.Dense(width, kernel_initializer="zeros")

    def pooled(self, rows, entry_rows, movies, shown):
        history = mean(self, rows, entry_rows, movies, shown)
        return history + self.mlp_out(self.mlp_hidden(history))

    with _patched(QueryTower, add_layers, _history_mean=pooled):
        yield


@contextlib.contextmanager
def _movie_weight(data, config):
    """A weighted mean of the history, each movie's weight exp(w) with w
    learned per movie (from 0): an inverse document frequency the model
    picks."""
    import tensorflow as tf
    import tf_keras as keras

    from trainer.model import QueryTower

    mean = QueryTower._history_mean

    def add_layers(self):
        self.movie_weight = keras.layers.Embedding(
            self.history_embedding.input_dim, 1, embeddings_initializer="zeros"
        )
        self.movie_weight.build((None,))

    def pooled(self, rows, entry_rows, movies, shown):
        weight = tf.exp(tf.gather(self.movie_weight.embeddings[:, 0], movies))
        return mean(self, rows, entry_rows, movies, shown * weight)

    with _patched(QueryTower, add_layers, _history_mean=pooled):
        yield


@contextlib.contextmanager
def _most_hidden(data, config, most: float):
    """The masked loss's hidden share drawn up to `most` instead of 1."""
    import tensorflow as tf

    from trainer.model import RetrievalModel

    def draw_hidden(self, batch, entry_rows):
        share = tf.random.uniform(
            [batch], minval=self.history_dropout, maxval=most
        )
        draws = tf.random.uniform(tf.shape(entry_rows))
        return tf.cast(draws < tf.gather(share, entry_rows), tf.float32)

    with _patched(RetrievalModel, draw_hidden=draw_hidden):
        yield


@contextlib.contextmanager
def _cosine_decay(data, config):
    """Adam's learning rate decayed to zero along a cosine over the run."""
    import tf_keras as keras

    from trainer import train

    users = len(np.unique(data.interactions.user_rows[data.split.fit]))
    steps = config.epochs * math.ceil(users / config.batch_size)

    def optimizer(config):
        schedule = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=steps, alpha=0.0
        )
        return keras.optimizers.Adam(learning_rate=schedule)

    with mock.patch.object(train, "_optimizer", optimizer):
        yield


@contextlib.contextmanager
def _item_item(data, config, l2: float):
    """A full-rank item-item part beside the towers, as in EASE but learned
    with the masked loss: the query gains the shown history as a 0/1 row
    over the catalogue (divided by its length), each movie a learned
    column of weights (from 0, with an L2 penalty of `l2`)."""
    import tensorflow as tf
    import tf_keras as keras

    from trainer.model import CandidateTower, QueryTower

    embed_movies = CandidateTower.embed_rows
    embed_users = QueryTower.embed_with_history

    def add_layers(self):
        rows = self.num_movies + 1
        self.item_item = keras.layers.Embedding(
            rows,
            rows,
            embeddings_initializer="zeros",
            embeddings_regularizer=keras.regularizers.l2(l2) if l2 else None,
        )
        self.item_item.build((None,))

    def movies(self, rows):
        return tf.concat(
            [embed_movies(self, rows), self.item_item(rows)], axis=1
        )

    def users(self, rows, entry_rows, movies, shown):
        towers = embed_users(self, rows, entry_rows, movies, shown)
        batch = tf.shape(rows, out_type=tf.int64)[0]
        width = tf.cast(self.history_embedding.input_dim, tf.int64)
        history = tf.scatter_nd(
            tf.stack([entry_rows, movies], axis=1),
            shown,
            tf.stack([batch, width]),
        )
        count = _history_count(rows, entry_rows, shown)
        return tf.concat([towers, history / count], axis=1)

    with (
        _patched(CandidateTower, add_layers, embed_rows=movies),
        _patched(QueryTower, embed_with_history=users),
    ):
        yield


# EASE's penalty in the distilled variants: the serving protocol's pick on
# this split's validation ratings (`ease` in quality.json).
DISTILLED_EASE_L2 = 200.0


@contextlib.contextmanager
def _ease_distilled(data, config, weight: float, temperature: float):
    """EASE distilled into the towers: the masked loss plus `weight` times
    the cross-entropy of the catalogue softmax against EASE's, EASE fitted
    on the fit ratings and scoring each user from the movies the loss
    shows (those left out of its softmax), its scores divided by
    `temperature`. A second target that carries EASE's full-rank ranking
    into 128 dimensions, the towers' own loss kept."""
    import tensorflow as tf

    from bench import baselines
    from trainer.model import RetrievalModel

    seen = baselines.to_csr(data.interactions.matrix(data.split.fit))
    ease = tf.constant(
        baselines.ease_weights(seen.toarray(), DISTILLED_EASE_L2),
        tf.float32,
    )
    draw_hidden = RetrievalModel.draw_hidden
    catalogue_logits = RetrievalModel._catalogue_logits
    masked_loss = RetrievalModel._masked_loss
    # The masked loss's own draw and logits, kept for the second term so
    # that the teacher sees exactly the movies the towers were shown.
    step = {}

    def hide(self, batch, entry_rows):
        step["hidden"] = draw_hidden(self, batch, entry_rows)
        return step["hidden"]

    def logits(self, query):
        step["logits"] = catalogue_logits(self, query)
        return step["logits"]

    def loss(self, users):
        towers_loss = masked_loss(self, users)
        rows, movies = self.query_tower.history_entries(users)
        batch = tf.shape(users, out_type=tf.int64)[0]
        shown = tf.scatter_nd(
            tf.stack([rows, movies - 1], axis=1),
            1.0 - step["hidden"],
            tf.stack([batch, ease.shape[0]]),
        )
        teacher = tf.matmul(shown, ease) / temperature - 1e9 * shown
        targets = tf.stop_gradient(tf.nn.softmax(teacher))
        cross = -tf.reduce_sum(
            targets * tf.nn.log_softmax(step["logits"]), axis=1
        )
        # A user shown nothing has no EASE scores to learn from.
        cross = tf.where(tf.reduce_sum(shown, axis=1) > 0, cross, 0.0)
        return towers_loss + weight * tf.reduce_sum(cross) / tf.cast(
            batch, tf.float32
        )

    with _patched(
        RetrievalModel,
        draw_hidden=hide,
        _catalogue_logits=logits,
        _masked_loss=loss,
    ):
        yield


VARIANTS = (
    Variant("default", "TrainConfig() as shipped"),
    Variant(
        "pool_sqrt",
        "history summed and divided by sqrt(n) instead of n",
        patch=functools.partial(_pooled_by_power, power=0.5),
    ),
    Variant(
        "pool_n075",
        "history summed and divided by n^0.75",
        patch=functools.partial(_pooled_by_power, power=0.75),
    ),
    Variant(
        "length_scale",
        "query scaled by a learned function of its history's length",
        patch=_length_scale,
    ),
    Variant(
        "movie_weight",
        "history mean weighted by a learned per-movie weight",
        patch=_movie_weight,
    ),
    Variant(
        "query_mlp",
        "residual tanh layer of 256 on the query",
        patch=_query_mlp,
    ),
    Variant(
        "hidden_from_0",
        "hidden share drawn from 0 instead of 0.2",
        config={"history_dropout": 0.0},
    ),
    Variant(
        "hidden_to_08",
        "hidden share drawn up to 0.8 instead of 1",
        patch=functools.partial(_most_hidden, most=0.8),
    ),
    Variant(
        "cosine_100",
        "learning rate decayed to 0 along a cosine over 100 epochs, "
        "no early stopping",
        config={"epochs": 100, "early_stopping_patience": 0},
        patch=_cosine_decay,
    ),
    Variant(
        "cosine_150",
        "as above over 150 epochs",
        config={"epochs": 150, "early_stopping_patience": 0},
        patch=_cosine_decay,
    ),
    Variant(
        "weight_decay_005", "Adam weight decay 0.05", {"weight_decay": 0.05}
    ),
    Variant("weight_decay_05", "Adam weight decay 0.5", {"weight_decay": 0.5}),
    Variant(
        "weight_decay_05_dim_256",
        "Adam weight decay 0.5 at width 256",
        {"weight_decay": 0.5, "embedding_dim": 256},
    ),
    Variant("batch_32", "batches of 32 users", {"batch_size": 32}),
    Variant("batch_128", "batches of 128 users", {"batch_size": 128}),
    Variant(
        "batch_128_lr_0006",
        "batches of 128 users, learning rate 0.006",
        {"batch_size": 128, "learning_rate": 0.006},
    ),
    Variant("temperature_05", "logits divided by 0.5", {"temperature": 0.5}),
    Variant(
        "no_movie_features",
        "no genres, year or title words",
        {"movie_features": False},
    ),
    Variant("no_item_bias", "no per-movie bias", {"item_bias": False}),
    Variant(
        "user_embedding",
        "plus an embedding of the user's id",
        {"user_embedding": True},
    ),
    Variant(
        "item_item",
        "plus a full-rank item-item part learned with the loss",
        patch=functools.partial(_item_item, l2=0.0),
    ),
    Variant(
        "item_item_l2",
        "as above, its weights under an L2 penalty of 1e-5",
        patch=functools.partial(_item_item, l2=1e-5),
    ),
    Variant(
        "ease_distilled",
        "plus EASE's softmax as a second target, weight 0.3, EASE scores "
        "divided by 0.05",
        patch=functools.partial(_ease_distilled, weight=0.3, temperature=0.05),
    ),
    Variant(
        "ease_distilled_sharp",
        "as above, weight 1, divided by 0.02",
        patch=functools.partial(_ease_distilled, weight=1.0, temperature=0.02),
    ),
)

_BY_NAME = {variant.name: variant for variant in VARIANTS}

BLEND_WEIGHTS = (0.5, 1.0, 2.0, 4.0)


def run_variant(
    variant: Variant,
    data: SplitData,
    max_epochs: int | None = None,
    base=None,
) -> dict:
    """Trains one variant on the fit ratings and scores each epoch on
    validation, for at most `max_epochs` if given (a quick check). The
    variant changes `base`, by default `TrainConfig()`."""
    from trainer.config import TrainConfig
    from trainer.train import validation_curve

    config = dataclasses.replace(base or TrainConfig(), **variant.config)
    if max_epochs is not None:
        config = dataclasses.replace(
            config, epochs=min(config.epochs, max_epochs)
        )
    patch = (
        variant.patch(data, config)
        if variant.patch
        else contextlib.nullcontext()
    )
    started = time.monotonic()
    with patch:
        curve = validation_curve(
            data.dataset, data.interactions, data.split, config
        )
    recalls = [h["recall_10"] for h in curve]
    around, best_index, first, last = mean_around_best(recalls)
    best = curve[best_index]
    result = {
        "variant": variant.name,
        "change": variant.change,
        "config": variant.config,
        "best_epoch": best["epoch"],
        "epochs_run": len(curve),
        "best": {k: best[k] for k in ("recall_10", "ndcg_10", "top_10")},
        "around_best_recall_10": around,
        "around_best_epochs": [first + 1, last],
        "recall_10_by_epoch": recalls,
        "final_loss": float(curve[-1]["loss"]),
        "seconds": time.monotonic() - started,
    }
    _log.info(
        "%s: best recall@10 %.4f at epoch %d of %d, %.4f over epochs %d-%d",
        variant.name,
        best["recall_10"],
        best["epoch"],
        len(curve),
        around,
        first + 1,
        last,
    )
    return result


def run_seed_check(
    rows: list[dict], data: SplitData, max_epochs: int | None = None
) -> dict:
    """Reruns the default and every variant whose mean around its best
    epoch beats the default's on `SEED_CHECK_SEEDS` (weights and shuffle;
    the split stays seed 42's), since one seed's window moves by about as
    much as these variants differ.

    Returns:
      {"seeds", "rows"}: one row per rerun variant with its
      `around_best_recall_10` and best `recall_10` per seed (seed 42's
      from `rows` first), or no rows when no variant beats the default.
    """
    from trainer.config import TrainConfig

    default = rows[0]
    if default["variant"] != "default":
        raise ValueError(
            f"the first row must be the default, got {default['variant']}"
        )
    ahead = [
        row["variant"]
        for row in rows[1:]
        if row["around_best_recall_10"] > default["around_best_recall_10"]
    ]
    checked = []
    if ahead:
        for row in [default, *(r for r in rows if r["variant"] in ahead)]:
            runs = [
                run_variant(
                    _BY_NAME[row["variant"]],
                    data,
                    max_epochs,
                    base=TrainConfig(seed=seed),
                )
                for seed in SEED_CHECK_SEEDS
            ]
            checked.append(
                {
                    "variant": row["variant"],
                    "around_best_recall_10": [
                        row["around_best_recall_10"],
                        *(run["around_best_recall_10"] for run in runs),
                    ],
                    "recall_10": [
                        row["best"]["recall_10"],
                        *(run["best"]["recall_10"] for run in runs),
                    ],
                }
            )
    return {"seeds": [TrainConfig().seed, *SEED_CHECK_SEEDS], "rows": checked}


def _standardised(scores: np.ndarray) -> np.ndarray:
    """Each user's scores to mean 0 and standard deviation 1, so that two
    models' scores add on one scale."""
    centred = scores - scores.mean(axis=1, keepdims=True)
    return centred / np.maximum(centred.std(axis=1, keepdims=True), 1e-12)


def run_blend(data: SplitData, epochs: int) -> dict:
    """Validation Recall@10 of the default (trained on the fit ratings for
    `epochs`) plus w times EASE (lambda tuned on validation), each user's
    scores standardised, at full rank and cut to the towers' width."""
    from bench import baselines
    from trainer import evaluation
    from trainer.config import TrainConfig
    from trainer.train import fit_split, tower_scorer

    it, split = data.interactions, data.split
    seen, held_out = it.matrix(split.fit), it.matrix(split.validation)
    users = np.arange(it.num_users)

    def recall(scores: np.ndarray) -> float:
        ranking = evaluation.ranking_quality(
            lambda rows: scores[rows], seen, held_out
        )
        return float(ranking.metrics()["recall_10"])

    config = dataclasses.replace(
        TrainConfig(), epochs=epochs, early_stopping_patience=0
    )
    on_fit = dataclasses.replace(split, train=split.fit)
    model = fit_split(data.dataset, it, on_fit, config).model
    ours = tower_scorer(model, it)(users)

    by_l2 = {
        l2: baselines.ease(seen, l2)(users) for l2 in baselines.EASE_L2_GRID
    }
    l2 = max(by_l2, key=lambda each: recall(by_l2[each]))
    full = by_l2[l2]
    # A catalogue narrower than the towers has nothing to cut.
    width = min(config.embedding_dim, it.num_movies)
    cut = baselines.ease_at_ranks(seen, l2, (width,))[width](users)
    rows = []
    for rank, ease in ((width, cut), (None, full)):
        for weight in BLEND_WEIGHTS:
            blended = _standardised(ours) + weight * _standardised(ease)
            rows.append(
                {
                    "ease_rank": rank,
                    "weight": weight,
                    "recall_10": recall(blended),
                }
            )
            _log.info("blend %s", rows[-1])
    return {
        "epochs": epochs,
        "ours_recall_10": recall(ours),
        "ease_l2": l2,
        "ease_recall_10": recall(full),
        "ease_cut_recall_10": recall(cut),
        "rows": rows,
    }


def _epoch_cap(name: str, max_epochs: int | None) -> int | None:
    """How many epochs the variant called `name` may run, or None for a
    variant no longer defined."""
    from trainer.config import TrainConfig

    variant = _BY_NAME.get(name)
    if variant is None:
        return None
    epochs = dataclasses.replace(TrainConfig(), **variant.config).epochs
    return min(epochs, max_epochs) if max_epochs else epochs


def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    command = report.get("meta", {}).get("command")
    # A partial run (--only) is reproduced by its own command, not by the
    # make target that runs every variant.
    rerun = (
        f"Made by `{command}`; `make bench-variants` runs every variant."
        if command
        else "Rerun with `make bench-variants`."
    )
    max_epochs = report.get("meta", {}).get("max_epochs")
    lines = [
        "# Variants of the shipped model (validation, random split)",
        "",
        *(
            [
                f"**Capped at {max_epochs} epochs by --max-epochs: a check "
                "that the variants run, not a result.**",
                "",
            ]
            if max_epochs
            else []
        ),
        "Each changes one idea in `TrainConfig()`'s model (some through two "
        "settings); trained on the fit ratings, scored on the validation "
        "ratings after every epoch, stopped early (the cosine schedules run "
        "to their end). Around the best: mean Recall@10 over "
        f"{AROUND_BEST} epochs on each side of the best, cut at the run's "
        f"ends. {rerun}",
        "",
        "| variant | change | best epoch | R@10 | around the best | top-10 "
        "| s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    capped = False
    for row in report["variants"]:
        cap = _epoch_cap(row["variant"], max_epochs)
        mark = "*" if row["epochs_run"] == cap else ""
        capped = capped or bool(mark)
        lines.append(
            f"| {row['variant']} | {row['change']} | {row['best_epoch']} "
            f"of {row['epochs_run']}{mark} | {row['best']['recall_10']:.4f} | "
            f"{row['around_best_recall_10']:.4f} | "
            f"{row['best']['top_10']:.4f} | {row['seconds']:.0f} |"
        )
    if capped:
        lines += [
            "",
            "\\* ran all the epochs it was allowed without stopping early "
            "(the cosine schedules always do): its best may lie beyond.",
        ]
    check = report.get("seed_check") or {}
    if check.get("rows"):
        seeds = check["seeds"]
        lines += [
            "",
            "## Seed check",
            "",
            "The default and each variant whose mean around the best beats "
            "the default's, rerun with other seeds for weights and shuffle "
            "(same split): mean Recall@10 around the best epoch, then the "
            "best epoch's, per seed. Seed 42's run is the one that picked "
            "the variants, so the last column leaves it out.",
            "",
            "| variant | "
            + " | ".join(f"seed {seed}" for seed in seeds)
            + f" | mean | mean, seeds {seeds[1]}-{seeds[-1]} |",
            "|---|" + "---:|" * (len(seeds) + 2),
        ]
        for row in check["rows"]:
            around, best = row["around_best_recall_10"], row["recall_10"]
            cells = [f"{a:.4f} ({b:.4f})" for a, b in zip(around, best)]
            lines.append(
                f"| {row['variant']} | "
                + " | ".join(cells)
                + f" | {np.mean(around):.4f} ({np.mean(best):.4f}) "
                f"| {np.mean(around[1:]):.4f} ({np.mean(best[1:]):.4f}) |"
            )
    blend = report.get("blend")
    if blend:
        lines += [
            "",
            "## The default blended with EASE",
            "",
            f"The default trained for {blend['epochs']} epochs (its best "
            f"above) scores {blend['ours_recall_10']:.4f}; EASE "
            f"(fitted on the fit ratings, lambda {blend['ease_l2']:g} "
            f"picked on validation) {blend['ease_recall_10']:.4f}, cut to "
            f"the towers' width {blend['ease_cut_recall_10']:.4f}. Each "
            "user's scores of both are standardised, then added with "
            "EASE's weighted by w. Lambda, w and the epochs are all picked "
            "on these validation ratings, so the best row is optimistic.",
            "",
            "| EASE | w | R@10 |",
            "|---|---:|---:|",
        ]
        for row in blend["rows"]:
            rank = (
                "full"
                if row["ease_rank"] is None
                else f"rank {row['ease_rank']}"
            )
            lines.append(
                f"| {rank} | {row['weight']:g} | {row['recall_10']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a whole number: {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.variants",
        description=(
            "Train each variant of the shipped model on MovieLens and "
            "score it on validation; write JSON and a Markdown table."
        ),
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="MovieLens folder (default: $MOVIELENS_DATA_DIR, else ml-100k "
        "is downloaded into the cache)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON to write; the Markdown goes beside it (default: "
        f"{DEFAULT_OUT}; a run with --only or --max-epochs must name "
        "its own, so as not to replace the committed results)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[v.name for v in VARIANTS],
        metavar="NAME",
        help="run only these variants (and the default, the reference "
        "of the seed check and the blend); one of: %(choices)s",
    )
    parser.add_argument(
        "--no-blend", action="store_true", help="skip the EASE blend"
    )
    parser.add_argument(
        "--max-epochs",
        type=_positive_int,
        metavar="N",
        help="train each variant for at most N epochs: a quick check that "
        "they run, not a result",
    )
    return parser


def _variants(only: list[str] | None) -> Iterator[Variant]:
    for variant in VARIANTS:
        if only is None or variant.name == "default" or variant.name in only:
            yield variant


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.out is None:
        if args.only or args.max_epochs:
            parser.error(
                "--only and --max-epochs make a partial run; give --out so "
                f"that it does not replace {DEFAULT_OUT}"
            )
        args.out = DEFAULT_OUT
    # The Markdown goes beside the JSON under the same stem; both are
    # written after the run, so a bad path fails now, not 40 minutes in.
    if args.out.suffix != ".json":
        parser.error(f"--out must name a .json file, got {args.out}")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"cannot write beside --out {args.out}: {e}")
    if not os.access(args.out.parent, os.W_OK):
        parser.error(f"cannot write to {args.out.parent}")
    from serving_common import logs

    from trainer import movielens

    logs.configure("INFO")
    started = time.monotonic()
    try:
        data_dir = movielens.resolve_data_dir(args.data_dir)
        data = SplitData(Settings(data_dir=str(data_dir)), "random")
    except (movielens.DownloadError, OSError, ValueError) as e:
        # A missing folder, a failed download or a malformed row: the
        # message names the file (and line) at fault.
        _log.error("%s", e)
        return 1
    _log.info(
        "random split of %s: %d fit, %d validation ratings",
        data_dir,
        len(data.split.fit),
        len(data.split.validation),
    )
    rows = [run_variant(v, data, args.max_epochs) for v in _variants(args.only)]
    report = {
        "meta": {
            "command": " ".join(
                ["python -m bench.variants", *(argv or sys.argv[1:])]
            ),
            "date": datetime.datetime.now(datetime.UTC).isoformat(
                timespec="seconds"
            ),
            "data_dir": str(data_dir),
            "cpus": os.cpu_count(),
            "max_epochs": args.max_epochs,
        },
        "variants": rows,
    }
    report["seed_check"] = run_seed_check(rows, data, args.max_epochs)
    if not args.no_blend:
        report["blend"] = run_blend(data, rows[0]["best_epoch"])
    report["meta"]["seconds"] = time.monotonic() - started
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    _log.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
