"""Retrieval quality of the shipped towers against four baselines, one run.

Every system is fitted and scored on the same splits of one MovieLens
release, each in a fresh process so that its peak memory is its own:

* ours: `TrainConfig()`, the model `make demo` publishes (its number of
  epochs picked on validation by early stopping inside `fit_split`);
* tutorial: the TensorFlow Recommenders basic retrieval tutorial's model
  and settings, untuned, as published;
* popular: the most rated movies, the same for everyone;
* als: implicit ALS from the `implicit` package;
* ease: EASE, in closed form.

ALS and EASE are tuned on the validation split separately for each
protocol, on that protocol's headline metric (top-100 accuracy, or
Recall@10), then refitted on all training ratings; the test ratings are
read only for the final report. Three protocols (see `trainer.evaluation`):
the tutorial's and the serving one on a random 80/20 split (seed 42), and
the serving one on a temporal split holding out each user's latest 20 %.

The ablation behind `TrainConfig`'s defaults runs last, on validation only:
each step changes the best configuration so far and is kept when
validation Recall@10 improves. One seed's run is noisy (about 0.003 of
Recall@10 between seeds), so the last kept step is then rerun beside the
configuration before it on three more seeds. Every run is seeded; on this
machine a rerun has reproduced every number.

The shipped model is also refitted on the same seeds (weights and shuffle;
same split) and scored on the random split's test ratings, so that its
gap to a baseline can be read against what a different seed alone moves.

For the serving protocols the report also breaks Recall@10 down by users'
history length (quartiles of their training movies, the same bands for
every system), since one average can hide that two systems serve light and
heavy users differently.

It also sets ours' validation Recall@10 at its best epoch beside the mean
over the epochs around it: the best of a hundred noisy epochs flatters a
model next to a baseline tuned over a handful of settings.

Writes the JSON given by --out, and quality.md (tables) and
quality_recall.png (recall@k curves) beside it; --render rewrites the
last two from an existing JSON without running anything.

    make bench-quality
    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m bench.quality \\
        --data-dir ../shared/data/ml-100k --out bench/results/quality.json
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import platform
import resource
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

# TensorFlow Recommenders needs Keras 2; set before TensorFlow is imported,
# here or in a worker process (which inherits the environment).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_log = logging.getLogger("bench.quality")

DEFAULT_OUT = Path(__file__).parent / "results" / "quality.json"
SYSTEMS = ("ours", "popular", "tutorial", "als", "ease")
TUTORIAL_PROTOCOL = "tutorial_protocol"
SERVING_PROTOCOL = "serving_protocol"
TEMPORAL_PROTOCOL = "temporal_protocol"
# Protocol: (split kind, metrics reported, metric tuned on).
PROTOCOLS = {
    TUTORIAL_PROTOCOL: ("random", ("top_10", "top_100"), "top_100"),
    SERVING_PROTOCOL: (
        "random",
        ("recall_10", "recall_50", "recall_100", "ndcg_10"),
        "recall_10",
    ),
    TEMPORAL_PROTOCOL: (
        "temporal",
        ("recall_10", "recall_50", "recall_100", "ndcg_10"),
        "recall_10",
    ),
}
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1
# RSS is sampled this often while a system fits, for its peak.
_RSS_POLL_S = 0.01
_MIB = 1 << 20

# The targets (MovieLens 100K).
TARGET_TOP_100 = 0.36
TARGET_TOP_10 = 0.05
TARGET_TRAIN_SECONDS = 180.0

# Steps of the ablation, in order: (name, what changes, settings changed).
# Each is applied to the best configuration so far and kept only if
# validation Recall@10 improves. The first is the tutorial itself; the
# second moves to this project's training loop with the tutorial's id-only
# towers and in-batch softmax. Per-rating steps count epochs in passes over
# the ratings; the per-user loss in passes over the users, hence its own
# epoch ceiling, batch and patience.
ABLATION_STEPS = (
    (
        "tutorial",
        "the tutorial: ids only, Adagrad 0.1, batch 8192, 3 epochs",
        {},
    ),
    (
        "adam",
        (
            "ids only, in-batch softmax; Adam 0.003, batch 512, width 64, "
            "early stopping"
        ),
        {
            "model": "features",
            "optimizer": "adam",
            "learning_rate": 0.003,
            "batch_size": 512,
            "embedding_dim": 64,
            "epochs": 20,
            "early_stopping_patience": 2,
            "user_embedding": True,
            "history": False,
            "history_dropout": 0.0,
            "movie_features": False,
            "item_bias": False,
            "loss": "in_batch",
        },
    ),
    ("logq", "+ logQ correction", {"logq_correction": True}),
    (
        "accidental_hits",
        "+ remove accidental hits",
        {"remove_accidental_hits": True},
    ),
    (
        "history",
        "+ user history: mean embedding of the other training movies",
        {"history": True},
    ),
    (
        "full_softmax",
        "softmax over the whole catalogue instead of the batch",
        {
            "loss": "full_softmax",
            "logq_correction": False,
            "remove_accidental_hits": False,
        },
    ),
    (
        "movie_features",
        "+ genres, release year, title words",
        {"movie_features": True},
    ),
    ("item_bias", "+ per-movie bias column", {"item_bias": True}),
    (
        "history_dropout",
        "+ hide half of the history at random per example",
        {"history_dropout": 0.5},
    ),
    (
        "multinomial",
        (
            "one example per user scored on all their movies (Mult-DAE); "
            "history only, no user-id embedding; batch 64 users"
        ),
        {
            "loss": "multinomial",
            "logq_correction": False,
            "remove_accidental_hits": False,
            "user_embedding": False,
            "batch_size": 64,
            "epochs": 150,
            "early_stopping_patience": 30,
        },
    ),
    (
        "history_dropout_07",
        "hide 70 % of the history",
        {"history_dropout": 0.7},
    ),
    ("dim_128", "width 128", {"embedding_dim": 128}),
    ("dim_32", "width 32", {"embedding_dim": 32}),
    (
        "masked",
        (
            "score only a hidden part of each history, its share drawn "
            "per user between 0.2 and 1; a user's hidden movies weigh "
            "1 / sqrt(their number)"
        ),
        {"loss": "masked", "history_dropout": 0.2},
    ),
    (
        "learning_rate_0001",
        "Adam at 0.001 instead of 0.003, up to 300 epochs",
        {"learning_rate": 0.001, "epochs": 300},
    ),
    ("dim_256", "width 256", {"embedding_dim": 256}),
)
# EASE is also scored with its weights cut to these multiples of the
# towers' width, cuts a two-tower model of that width could express, to
# show how much of EASE's lead comes from its full rank.
EASE_RANK_MULTIPLES = (1, 2, 4, 8)
# The ablation runs each step once, on --seed; its last kept step is then
# rerun beside the configuration before it on these other seeds, to show
# whether its gain is larger than what a different seed alone changes.
SEED_CHECK_SEEDS = (43, 44, 45)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every worker needs to rebuild the same data and splits.

    Attributes:
      data_dir: the MovieLens folder.
      seed: seeds the random split and every system.
      test_fraction: share held out for test.
      validation_fraction: share of the training part held out for tuning.
      log_level: the workers' log level.
    """

    data_dir: str
    seed: int = 42
    test_fraction: float = TEST_FRACTION
    validation_fraction: float = VALIDATION_FRACTION
    log_level: str = "INFO"


class _PeakRss:
    """Samples this process's resident memory in a thread while a block
    runs; `peak_mib` is the most above what it was on entry."""

    def __enter__(self):
        self._start = _rss_bytes()
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())

    def _poll(self):
        while not self._stop.wait(_RSS_POLL_S):
            self._peak = max(self._peak, _rss_bytes())

    @property
    def peak_mib(self) -> float:
        return (self._peak - self._start) / _MIB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SplitData:
    """The dataset, its dense numbering and one split, loaded in a worker."""

    def __init__(self, settings: Settings, kind: str):
        from trainer import evaluation, movielens, splits

        self.dataset = movielens.load(settings.data_dir)
        self.interactions = evaluation.Interactions.from_dataset(self.dataset)
        self.split = splits.make_split(
            kind,
            self.dataset.ratings.user_id,
            self.dataset.ratings.timestamp,
            settings.test_fraction,
            settings.validation_fraction,
            settings.seed,
        )

    def score(self, scorer, fitted: np.ndarray, held_out: np.ndarray):
        """Both protocols' metrics of a scorer fitted on `fitted` and
        scored on `held_out` (positions): (tutorial metrics, serving
        RankingQuality)."""
        from trainer import evaluation

        it = self.interactions
        tutorial = evaluation.top_k_accuracy(
            scorer,
            it.user_rows[held_out],
            it.movie_rows[held_out],
            ks=(10, 100),
        )
        ranking = evaluation.ranking_quality(
            scorer, it.matrix(fitted), it.matrix(held_out)
        )
        return tutorial, ranking


def _protocol_result(data: SplitData, scorer, protocol: str) -> dict:
    """Test metrics of a scorer fitted on all training ratings and, for
    the serving protocols, its recall@k curve and Recall@10 by users'
    history length."""
    from trainer import evaluation

    tutorial, ranking = data.score(scorer, data.split.train, data.split.test)
    if protocol == TUTORIAL_PROTOCOL:
        return {"metrics": tutorial, "recall_curve": None}
    metrics = ranking.metrics()
    return {
        "metrics": {k: metrics[k] for k in PROTOCOLS[protocol][1]},
        "recall_curve": [round(float(r), 6) for r in ranking.recall],
        "recall_by_history": evaluation.recall_by_history(
            ranking, data.interactions.matrix(data.split.train)
        ),
    }


def _towers(system: str, data: SplitData, settings: Settings, protocols):
    import tensorflow as tf

    from trainer.config import TrainConfig
    from trainer.train import fit_split, tower_scorer

    # TensorFlow sets its runtime up on the first op; that is the library's
    # cost, not the fit's, so it happens before the fit is measured.
    tf.reduce_sum(tf.ones([2, 2]))

    config = (
        TrainConfig(seed=settings.seed)
        if system == "ours"
        else TrainConfig.tutorial(seed=settings.seed)
    )
    with _PeakRss() as peak:
        fitted = fit_split(data.dataset, data.interactions, data.split, config)
    scorer = tower_scorer(fitted.model, data.interactions)
    return {
        protocol: {
            **_protocol_result(data, scorer, protocol),
            "params": {"epochs": fitted.epochs},
            # Early stopping's validation run is part of training `ours`,
            # as it is of every `python -m trainer` run.
            "train_seconds": fitted.seconds,
            "tuning_seconds": 0.0,
            "fit_peak_mib": peak.peak_mib,
        }
        for protocol in protocols
    }, {"validation": fitted.validation}


def _grid(system: str, seed: int):
    """(params, fit function) candidates of a tunable baseline."""
    from bench import baselines

    if system == "ease":
        return [
            ({"l2": l2}, lambda seen, l2=l2: baselines.ease(seen, l2))
            for l2 in baselines.EASE_L2_GRID
        ]
    return [
        (
            params,
            lambda seen, p=params: baselines.als(seen, seed=seed, **p),
        )
        for params in baselines.ALS_GRID
    ]


def _baseline(system: str, data: SplitData, settings: Settings, protocols):
    from bench import baselines

    it, split = data.interactions, data.split
    if system == "popular":
        candidates = [({}, baselines.popular)]
    else:
        candidates = _grid(system, settings.seed)

    # Every candidate is scored once on validation; each protocol then
    # picks its own best.
    tuning, started = [], time.monotonic()
    if len(candidates) > 1:
        fit_matrix = it.matrix(split.fit)
        for params, fit in candidates:
            tutorial, ranking = data.score(
                fit(fit_matrix), split.fit, split.validation
            )
            tuning.append({**params, **tutorial, **ranking.metrics()})
            _log.info("%s %s: validation %s", system, params, tuning[-1])
    tuning_seconds = time.monotonic() - started

    results, train_matrix = {}, it.matrix(split.train)
    for protocol in protocols:
        objective = PROTOCOLS[protocol][2]
        best = (
            max(range(len(tuning)), key=lambda i: tuning[i][objective])
            if tuning
            else 0
        )
        params, fit = candidates[best]
        with _PeakRss() as peak:
            started = time.monotonic()
            scorer = fit(train_matrix)
            seconds = time.monotonic() - started
        results[protocol] = {
            **_protocol_result(data, scorer, protocol),
            "params": params,
            "train_seconds": seconds,
            "tuning_seconds": tuning_seconds,
            "fit_peak_mib": peak.peak_mib,
        }
    details = {"validation": tuning}
    if system == "ease" and SERVING_PROTOCOL in results:
        details["by_rank"] = _ease_by_rank(
            data, results[SERVING_PROTOCOL]["params"]["l2"]
        )
    return results, details


def _ease_by_rank(data: SplitData, l2: float) -> list[dict]:
    """Serving-protocol test metrics of EASE (fitted on all training
    ratings with the tuned `l2`) cut to `EASE_RANK_MULTIPLES` of the
    towers' width."""
    from bench import baselines
    from trainer.config import TrainConfig

    width = TrainConfig().embedding_dim
    ranks = tuple(
        m * width
        for m in EASE_RANK_MULTIPLES
        if m * width <= data.interactions.num_movies
    )
    scorers = baselines.ease_at_ranks(
        data.interactions.matrix(data.split.train), l2, ranks
    )
    rows = []
    for rank, scorer in scorers.items():
        _, ranking = data.score(scorer, data.split.train, data.split.test)
        metrics = ranking.metrics()
        rows.append(
            {
                "rank": rank,
                **{m: metrics[m] for m in PROTOCOLS[SERVING_PROTOCOL][1]},
            }
        )
        _log.info("EASE cut to rank %d: test %s", rank, rows[-1])
    return rows


def run_system(system: str, kind: str, settings: Settings) -> dict:
    """Fits and scores one system on one split kind, in a worker process.

    Returns:
      {"protocols": {protocol: result}, "details": ..., "peak_rss_mib":
      the worker's peak resident memory, libraries and data included}.
    """
    protocols = [p for p, spec in PROTOCOLS.items() if spec[0] == kind]
    data = SplitData(settings, kind)
    if system in ("ours", "tutorial"):
        results, details = _towers(system, data, settings, protocols)
    else:
        results, details = _baseline(system, data, settings, protocols)
    return {
        "protocols": results,
        "details": details,
        "peak_rss_mib": _max_rss_mib(),
    }


def run_ablation(settings: Settings) -> list[dict]:
    """The greedy ablation on the random split's validation ratings.

    Returns:
      One dict per step: name, change, kept, the best epoch's validation
      metrics, and the config it ran.
    """
    from trainer.config import TrainConfig
    from trainer.train import validation_curve

    data = SplitData(settings, "random")
    steps, best_config, best_recall = [], None, -1.0
    for name, change, settings_changed in ABLATION_STEPS:
        if best_config is None:
            config = TrainConfig.tutorial(seed=settings.seed)
        else:
            config = dataclasses.replace(best_config, **settings_changed)
        started = time.monotonic()
        curve = validation_curve(
            data.dataset, data.interactions, data.split, config
        )
        # Without early stopping (the tutorial) the model is what its last
        # epoch made; with it, what the best epoch made.
        best = (
            max(curve, key=lambda h: h["recall_10"])
            if config.early_stopping_patience
            else curve[-1]
        )
        kept = best["recall_10"] > best_recall
        if kept:
            best_config, best_recall = config, best["recall_10"]
        steps.append(
            {
                "step": name,
                "change": change,
                "kept": kept,
                "best_epoch": best["epoch"],
                "validation": {
                    k: best[k]
                    for k in ("recall_10", "ndcg_10", "top_10", "top_100")
                },
                "seconds": time.monotonic() - started,
                "config": dataclasses.asdict(config),
            }
        )
        _log.info(
            "ablation %s: validation recall@10 %.4f (%s)",
            name,
            best["recall_10"],
            "kept" if kept else "dropped",
        )
    return steps


def _best_on_validation(data: SplitData, config) -> dict:
    from trainer.train import validation_curve

    curve = validation_curve(
        data.dataset, data.interactions, data.split, config
    )
    return max(curve, key=lambda h: h["recall_10"])


def run_seed_check(settings: Settings, steps: list[dict]) -> dict:
    """Reruns the ablation's last kept step and the configuration it
    changed on `SEED_CHECK_SEEDS` (weights and shuffle only; the split
    stays the one of `settings.seed`).

    Returns:
      {"step", "seeds", "before", "after"}, the last two lists of
      {"recall_10", "top_10"} per seed (the ablation's own run first), and
      the mean gains.
    """
    from trainer.config import TrainConfig

    kept = [s for s in steps if s["kept"]]
    after_step, before_step = kept[-1], kept[-2]
    data = SplitData(settings, "random")
    result = {
        "step": after_step["step"],
        "seeds": [settings.seed, *SEED_CHECK_SEEDS],
        "before": [_headline(before_step["validation"])],
        "after": [_headline(after_step["validation"])],
    }
    for seed in SEED_CHECK_SEEDS:
        for side, step in (("before", before_step), ("after", after_step)):
            config = TrainConfig(**{**step["config"], "seed": seed})
            result[side].append(_headline(_best_on_validation(data, config)))
            _log.info(
                "seed check, %s %s, seed %d: validation recall@10 %.4f",
                side,
                step["step"],
                seed,
                result[side][-1]["recall_10"],
            )
    for metric in ("recall_10", "top_10"):
        gains = [
            a[metric] - b[metric]
            for a, b in zip(result["after"], result["before"])
        ]
        result[f"mean_gain_{metric}"] = float(np.mean(gains))
        result[f"seeds_improved_{metric}"] = int(sum(g > 0 for g in gains))
    return result


def run_seed_spread(settings: Settings) -> list[dict]:
    """Test metrics of `TrainConfig()` fitted with `SEED_CHECK_SEEDS`
    (the split stays the one of `settings.seed`), random split.

    Returns:
      One dict per seed: seed, best epoch, and the serving protocol's
      Recall@10 and NDCG@10 and the tutorial protocol's top-10 and top-100.
    """
    from trainer.config import TrainConfig
    from trainer.train import fit_split, tower_scorer

    data = SplitData(settings, "random")
    runs = []
    for seed in SEED_CHECK_SEEDS:
        fitted = fit_split(
            data.dataset, data.interactions, data.split, TrainConfig(seed=seed)
        )
        tutorial, ranking = data.score(
            tower_scorer(fitted.model, data.interactions),
            data.split.train,
            data.split.test,
        )
        serving = ranking.metrics()
        runs.append(
            {
                "seed": seed,
                "epochs": fitted.epochs,
                "recall_10": serving["recall_10"],
                "ndcg_10": serving["ndcg_10"],
                "top_10": tutorial["top_10"],
                "top_100": tutorial["top_100"],
            }
        )
        _log.info(
            "seed spread, seed %d: test recall@10 %.4f",
            seed,
            serving["recall_10"],
        )
    return runs


def _headline(metrics: dict) -> dict:
    return {k: float(metrics[k]) for k in ("recall_10", "top_10")}


def _init_worker(level: str) -> None:
    from serving_common import logs

    logs.configure(level)


def _in_fresh_process(settings: Settings, function, *args):
    """Runs function(*args) in a new process and returns its result."""
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(settings.log_level,),
    ) as pool:
        return pool.submit(function, *args).result()


def _collect(runs: dict[tuple[str, str], dict]) -> dict:
    """Arranges the workers' results into the report's JSON shape."""
    report: dict = {protocol: {} for protocol in PROTOCOLS}
    resources: dict = {protocol: {} for protocol in PROTOCOLS}
    curves: dict = {p: {} for p in PROTOCOLS if p != TUTORIAL_PROTOCOL}
    by_history: dict = {p: {} for p in curves}
    tuned: dict = {protocol: {} for protocol in PROTOCOLS}
    for (system, _), run in runs.items():
        for protocol, result in run["protocols"].items():
            report[protocol][system] = result["metrics"]
            resources[protocol][system] = {
                "train_seconds": round(result["train_seconds"], 2),
                "tuning_seconds": round(result["tuning_seconds"], 2),
                "fit_peak_mib": round(result["fit_peak_mib"], 1),
                "process_peak_rss_mib": round(run["peak_rss_mib"], 1),
            }
            tuned[protocol][system] = result["params"]
            if result["recall_curve"] is not None:
                curves[protocol][system] = result["recall_curve"]
                by_history[protocol][system] = result["recall_by_history"]
    return {
        **report,
        "resources": resources,
        "tuned": tuned,
        "recall_curves": curves,
        "recall_10_by_history": by_history,
    }


def _targets(report: dict) -> dict:
    ours_tutorial = report[TUTORIAL_PROTOCOL]["ours"]
    ours_serving = report[SERVING_PROTOCOL]["ours"]
    seconds = report["resources"][SERVING_PROTOCOL]["ours"]["train_seconds"]
    ease_recall = report[SERVING_PROTOCOL]["ease"]["recall_10"]
    return {
        "tutorial_top_100_at_least": {
            "target": TARGET_TOP_100,
            "value": ours_tutorial["top_100"],
            "met": ours_tutorial["top_100"] >= TARGET_TOP_100,
        },
        "tutorial_top_10_at_least": {
            "target": TARGET_TOP_10,
            "value": ours_tutorial["top_10"],
            "met": ours_tutorial["top_10"] >= TARGET_TOP_10,
        },
        "serving_recall_10_at_least_ease": {
            "target": ease_recall,
            "value": ours_serving["recall_10"],
            "met": ours_serving["recall_10"] >= ease_recall,
        },
        "train_seconds_below": {
            "target": TARGET_TRAIN_SECONDS,
            "value": seconds,
            "met": seconds < TARGET_TRAIN_SECONDS,
        },
    }


def _default_differences(steps: list[dict]) -> dict:
    """Settings where the ablation's final choice and `TrainConfig()`
    differ (epochs and patience aside: the ablation's steps search up to a
    ceiling, while the default is what `fit` uses)."""
    from trainer.config import TrainConfig

    chosen = [s for s in steps if s["kept"]][-1]["config"]
    default = dataclasses.asdict(TrainConfig())
    return {
        k: {"ablation": chosen[k], "default": default[k]}
        for k in default
        if chosen[k] != default[k]
        and k not in ("epochs", "early_stopping_patience")
    }


def _meta(settings: Settings, argv: list[str], seconds: float) -> dict:
    from trainer import evaluation, movielens, splits

    dataset = movielens.load(settings.data_dir)
    it = evaluation.Interactions.from_dataset(dataset)
    sizes = {}
    for kind in splits.KINDS:
        split = splits.make_split(
            kind,
            dataset.ratings.user_id,
            dataset.ratings.timestamp,
            settings.test_fraction,
            settings.validation_fraction,
            settings.seed,
        )
        sizes[kind] = {
            part: int(len(getattr(split, part)))
            for part in ("train", "fit", "validation", "test")
        }
    return {
        "dataset": {
            "name": dataset.name,
            "sha256": dataset.sha256,
            "ratings": int(len(dataset.ratings)),
            "users": it.num_users,
            "movies": it.num_movies,
        },
        "splits": sizes,
        "seed": settings.seed,
        "test_fraction": settings.test_fraction,
        "validation_fraction": settings.validation_fraction,
        "command": "python -m bench.quality " + " ".join(argv),
        "total_seconds": round(seconds, 1),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            name: metadata.version(name)
            for name in (
                "tensorflow",
                "tensorflow-recommenders",
                "implicit",
                "numpy",
            )
        },
    }


_LABELS = {
    "ours": "ours (history + features)",
    "tutorial": "tutorial two-tower",
    "popular": "most popular",
    "als": "implicit ALS",
    "ease": "EASE",
}
_TITLES = {
    TUTORIAL_PROTOCOL: (
        "Tutorial protocol",
        (
            "random 80/20 split (seed 42); each test rating is a query; top-k "
            "accuracy over the whole catalogue, movies rated in training left "
            "in (TFRS `FactorizedTopK`). Tuned on validation top-100."
        ),
    ),
    SERVING_PROTOCOL: (
        "Serving protocol",
        (
            "same random split; per user, training movies removed from the "
            "ranking; Recall@k = hits / min(k, the user's test movies); "
            "binary NDCG@10; averaged over users. Tuned on validation "
            "Recall@10."
        ),
    ),
    TEMPORAL_PROTOCOL: (
        "Temporal protocol",
        (
            "each user's latest 20 % of ratings held out (validation: the "
            "latest 10 % of the rest); otherwise as the serving protocol."
        ),
    ),
}
_METRIC_NAMES = {
    "top_10": "top-10",
    "top_100": "top-100",
    "recall_10": "R@10",
    "recall_50": "R@50",
    "recall_100": "R@100",
    "ndcg_10": "NDCG@10",
}


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items()) or "-"


def markdown(report: dict) -> str:
    """The report's tables as Markdown."""
    meta = report["meta"]
    lines = [
        f"# Retrieval quality on MovieLens ({meta['dataset']['name']})",
        "",
        (
            f"{meta['dataset']['ratings']:,} ratings, "
            f"{meta['dataset']['users']:,} users, "
            f"{meta['dataset']['movies']:,} movies; seed {meta['seed']}; "
            f"`{meta['command']}` on {meta['machine']['cpus']} CPUs in "
            f"{meta['total_seconds']:.0f} s. Train s: wall time of the final "
            "fit (for ours, early stopping's validation run included); tuning "
            "s: the validation grid; fit peak: resident memory above the "
            "start of the fit; process peak: the worker's whole peak, "
            "libraries (TensorFlow: about 0.6 GB) and data included."
        ),
    ]
    for protocol, (title, description) in _TITLES.items():
        if not report[protocol]:
            continue
        metrics = PROTOCOLS[protocol][1]
        lines += [
            "",
            f"## {title}",
            "",
            description,
            "",
            "| system | "
            + " | ".join(_METRIC_NAMES[m] for m in metrics)
            + " | tuned | train s | tuning s | fit peak MiB "
            "| process peak MiB |",
            "|---|" + "---:|" * len(metrics) + "---|---:|---:|---:|---:|",
        ]
        for system in SYSTEMS:
            if system not in report[protocol]:
                continue
            values = report[protocol][system]
            used = report["resources"][protocol][system]
            lines.append(
                f"| {_LABELS[system]} | "
                + " | ".join(f"{values[m]:.4f}" for m in metrics)
                + f" | {_params_text(report['tuned'][protocol][system])}"
                f" | {used['train_seconds']:.1f}"
                f" | {used['tuning_seconds']:.1f}"
                f" | {used['fit_peak_mib']:.0f}"
                f" | {used['process_peak_rss_mib']:.0f} |"
            )
    lines += _by_history_lines(report)
    lines += _ease_rank_lines(report)
    lines += _validation_lines(report)
    lines += _seed_spread_lines(report)
    if "targets" in report:
        lines += ["", "## Targets", ""]
        for name, target in report["targets"].items():
            lines.append(
                f"- {name.replace('_', ' ')} {target['target']:.4g}: "
                f"{target['value']:.4g}, "
                f"{'met' if target['met'] else 'NOT met'}"
            )
    if "ablation" in report:
        lines += [
            "",
            "## Ablation (validation split of the random split)",
            "",
            (
                "Each step changes the best configuration so far and is kept "
                "only if validation Recall@10 improves; metrics at the best "
                "epoch (the last for the tutorial, which does not stop "
                "early)."
            ),
            "",
            (
                "| step | change | kept | epoch | R@10 | NDCG@10 | top-10 "
                "| top-100 | s |"
            ),
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for step in report["ablation"]["steps"]:
            v = step["validation"]
            lines.append(
                f"| {step['step']} | {step['change']} | "
                f"{'yes' if step['kept'] else 'no'} | {step['best_epoch']} "
                f"| {v['recall_10']:.4f} | {v['ndcg_10']:.4f} "
                f"| {v['top_10']:.4f} | {v['top_100']:.4f} "
                f"| {step['seconds']:.0f} |"
            )
        differences = report["ablation"]["differs_from_default"]
        lines += [
            "",
            "The ablation's final choice "
            + (
                "is `TrainConfig()`'s default."
                if not differences
                else "differs from `TrainConfig()` in: "
                + ", ".join(
                    f"{k} (ablation {v['ablation']}, default {v['default']})"
                    for k, v in differences.items()
                )
                + "."
            ),
        ]
        check = report["ablation"].get("seed_check")
        if check:
            lines += [
                "",
                f"### Seed check of the last kept step, `{check['step']}`",
                "",
                (
                    "The step and the configuration it changed, rerun on "
                    "other seeds (weights and shuffle; same split); "
                    "validation at each run's best epoch."
                ),
                "",
                "| seed | R@10 before | R@10 after | top-10 before "
                "| top-10 after |",
                "|---:|---:|---:|---:|---:|",
            ]
            for seed, b, a in zip(
                check["seeds"], check["before"], check["after"]
            ):
                lines.append(
                    f"| {seed} | {b['recall_10']:.4f} | {a['recall_10']:.4f}"
                    f" | {b['top_10']:.4f} | {a['top_10']:.4f} |"
                )
            n = len(check["seeds"])
            lines += [
                "",
                f"Mean gain: Recall@10 {check['mean_gain_recall_10']:+.4f} "
                f"(higher on {check['seeds_improved_recall_10']} of {n} "
                f"seeds), top-10 {check['mean_gain_top_10']:+.4f} (higher "
                f"on {check['seeds_improved_top_10']} of {n}).",
            ]
    return "\n".join(lines) + "\n"


def _ease_rank_lines(report: dict) -> list[str]:
    """Markdown table of EASE cut to fewer dimensions, beside ours and the
    full EASE."""
    rows = report.get("details", {}).get("ease/random", {}).get("by_rank")
    if not rows:
        return []
    serving = report[SERVING_PROTOCOL]
    metrics = PROTOCOLS[SERVING_PROTOCOL][1]
    lines = [
        "",
        "## EASE cut to fewer dimensions, serving protocol, test",
        "",
        (
            "EASE's weights (fitted as above) cut to their largest singular "
            "values: what EASE would be as a two-tower model of that width. "
            "A rank-r cut is the closest rank-r matrix to EASE's weights, "
            "not the best rank-r model, so a model of that width can score "
            "above it."
        ),
        "",
        "| system | dimensions | "
        + " | ".join(_METRIC_NAMES[m] for m in metrics)
        + " |",
        "|---|---:|" + "---:|" * len(metrics),
    ]
    for row in rows:
        lines.append(
            f"| EASE, cut | {row['rank']} | "
            + " | ".join(f"{row[m]:.4f}" for m in metrics)
            + " |"
        )
    if "ease" in serving:
        movies = report["meta"]["dataset"]["movies"]
        lines.append(
            f"| EASE | {movies} (full) | "
            + " | ".join(f"{serving['ease'][m]:.4f}" for m in metrics)
            + " |"
        )
    if "ours" in serving:
        # The first cut is at the towers' width.
        lines.append(
            f"| {_LABELS['ours']} | {rows[0]['rank']} | "
            + " | ".join(f"{serving['ours'][m]:.4f}" for m in metrics)
            + " |"
        )
    return lines


# Epochs on each side of ours' best epoch averaged in the validation
# section of the report.
AROUND_BEST = 4


def mean_around_best(recalls: list[float]) -> tuple[float, int, int, int]:
    """The mean of a validation curve over `AROUND_BEST` epochs on each side
    of its best, cut at the curve's ends.

    Returns:
      (mean, best, first, last): the mean over `recalls[first:last]`, and
      the index of the best epoch.
    """
    best = int(np.argmax(recalls))
    first = max(0, best - AROUND_BEST)
    last = min(len(recalls), best + AROUND_BEST + 1)
    return float(np.mean(recalls[first:last])), best, first, last


def _validation_lines(report: dict) -> list[str]:
    """Markdown table of validation Recall@10 on the random split: ours at
    its best epoch and around it, the tuned baselines at their best
    setting."""
    details = report.get("details", {})
    curve = details.get("ours/random", {}).get("validation")
    if not curve:
        return []
    recalls = [epoch["recall_10"] for epoch in curve]
    around, best, first, last = mean_around_best(recalls)
    lines = [
        "",
        "## Validation, random split",
        "",
        (
            "Recall@10 on the validation ratings that pick ours' epochs and "
            "the baselines' settings. Ours is scored after every epoch and "
            "its best epoch is kept, so that value is partly a lucky peak: "
            "from one epoch to the next it moves by a few thousandths. The "
            "mean over the epochs around the best is the steadier figure "
            "to set beside the baselines'."
        ),
        "",
        "| system | best | around the best |",
        "|---|---:|---:|",
        (
            f"| {_LABELS['ours']}, epoch {best + 1} of {len(curve)} "
            f"| {recalls[best]:.4f} "
            f"| {around:.4f} "
            f"(epochs {first + 1}-{last}) |"
        ),
    ]
    for system in ("ease", "als"):
        grid = details.get(f"{system}/random", {}).get("validation")
        if grid:
            top = max(grid, key=lambda row: row["recall_10"])
            lines.append(
                f"| {_LABELS[system]}, best of {len(grid)} settings "
                f"| {top['recall_10']:.4f} | |"
            )
    return lines


def _seed_spread_lines(report: dict) -> list[str]:
    """Markdown table of ours on other seeds, beside the main run and the
    baselines that do not depend on the seed."""
    runs = report.get("seed_spread")
    if not runs:
        return []
    serving = report[SERVING_PROTOCOL]
    tutorial = report[TUTORIAL_PROTOCOL]
    ours = [
        {
            "seed": report["meta"]["seed"],
            "epochs": report["tuned"][SERVING_PROTOCOL]["ours"]["epochs"],
            **{k: serving["ours"][k] for k in ("recall_10", "ndcg_10")},
            **{k: tutorial["ours"][k] for k in ("top_10", "top_100")},
        },
        *runs,
    ]
    lines = [
        "",
        "## Ours on other seeds, random split, test",
        "",
        (
            "`TrainConfig()` refitted with other seeds for its weights and "
            "shuffle (same split), each picking its own epochs on "
            "validation; the first row is the run above."
        ),
        "",
        "| seed | epochs | R@10 | NDCG@10 | top-10 | top-100 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    columns = ("recall_10", "ndcg_10", "top_10", "top_100")
    for run in ours:
        cells = " | ".join(f"{run[c]:.4f}" for c in columns)
        lines.append(f"| {run['seed']} | {run['epochs']} | {cells} |")
    medians = " | ".join(
        f"{float(np.median([run[c] for run in ours])):.4f}" for c in columns
    )
    lines += [f"| median | | {medians} |", ""]
    recalls = [run["recall_10"] for run in ours]
    beside = [
        f"{_LABELS[s]} {serving[s]['recall_10']:.4f}"
        for s in ("ease", "als")
        if s in serving
    ]
    if beside:
        lines.append(
            f"Recall@10 over the {len(ours)} seeds: {min(recalls):.4f} to "
            f"{max(recalls):.4f}; beside {', '.join(beside)}."
        )
    return lines


def _by_history_lines(report: dict) -> list[str]:
    """Markdown tables of Recall@10 by users' history length."""
    lines = []
    for protocol, systems in report.get("recall_10_by_history", {}).items():
        shown = [s for s in SYSTEMS if s in systems]
        if not shown:
            continue
        lines += [
            "",
            f"## Recall@10 by history length, {_TITLES[protocol][0].lower()}",
            "",
            (
                "Test users in quartiles of their number of training movies; "
                "each cell is the mean Recall@10 of the band's users."
            ),
            "",
            "| training movies | users | "
            + " | ".join(_LABELS[s] for s in shown)
            + " |",
            "|---|---:|" + "---:|" * len(shown),
        ]
        for i, band in enumerate(systems[shown[0]]):
            cells = [f"{systems[s][i]['recall']:.4f}" for s in shown]
            lines.append(
                f"| {band['min_history']}-{band['max_history']} "
                f"| {band['users']} | " + " | ".join(cells) + " |"
            )
    return lines


def plot_recall(report: dict, path: Path) -> None:
    """Plots recall@k for k = 1..100 per system, one panel per serving
    protocol, as a PNG."""
    import matplotlib

    # No display on a server; Agg renders straight to the file.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in report["recall_curves"] if report["recall_curves"][p]]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False
    )
    for axis, protocol in zip(axes[0], panels, strict=True):
        for system in SYSTEMS:
            curve = report["recall_curves"][protocol].get(system)
            if curve is None:
                continue
            axis.plot(
                np.arange(1, len(curve) + 1),
                curve,
                label=_LABELS[system],
                linewidth=2.2 if system == "ours" else 1.4,
            )
        axis.set_title(_TITLES[protocol][0])
        axis.set_xlabel("k")
        axis.set_ylabel("Recall@k = hits / min(k, held-out movies)")
        axis.set_xlim(
            1, max(len(c) for c in report["recall_curves"][protocol].values())
        )
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels))
    figure.suptitle(f"MovieLens {report['meta']['dataset']['name']}: recall@k")
    # Room at the bottom for the shared legend.
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description=(
            "Retrieval quality of the two-tower model against the "
            "tutorial model, most popular, implicit ALS and EASE on "
            "MovieLens, under the tutorial, serving and temporal "
            "protocols. Writes JSON, a Markdown table and a recall@k plot."
        ),
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="MovieLens folder (default: $MOVIELENS_DATA_DIR, else ml-100k "
        "is downloaded into the cache)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON report; quality.md and quality_recall.png are written "
        "beside it (default: %(default)s)",
    )
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seeds the random split and every system (default: %(default)s)",
    )
    p.add_argument(
        "--no-ablation",
        action="store_true",
        help="skip the ablation of the model's settings (several minutes)",
    )
    p.add_argument(
        "--no-seed-spread",
        action="store_true",
        help="skip refitting ours on other seeds (several minutes)",
    )
    p.add_argument(
        "--render",
        action="store_true",
        help="run nothing: rewrite quality.md and the plot from the JSON "
        "at --out",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        _parser().error(
            f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}"
        )

    from serving_common import logs
    from trainer import movielens

    logs.configure(args.log_level)
    if args.render:
        if not args.out.is_file():
            _parser().error(f"--render reads {args.out}, which does not exist")
        report = json.loads(args.out.read_text(encoding="utf-8"))
        _write_renderings(report, args.out)
        return 0
    started = time.monotonic()
    try:
        data_dir = movielens.resolve_data_dir(args.data_dir)
    except movielens.DownloadError as e:
        _log.error("%s", e)
        return 1
    settings = Settings(
        data_dir=str(data_dir), seed=args.seed, log_level=args.log_level
    )

    runs = {}
    for system in systems:
        for kind in ("random", "temporal"):
            _log.info("running %s on the %s split", system, kind)
            runs[system, kind] = _in_fresh_process(
                settings, run_system, system, kind, settings
            )
    report = _collect(runs)
    if set(SYSTEMS) <= set(systems):
        report["targets"] = _targets(report)
    report["details"] = {
        f"{system}/{kind}": run["details"]
        for (system, kind), run in runs.items()
    }
    if not args.no_ablation:
        _log.info("running the ablation")
        steps = _in_fresh_process(settings, run_ablation, settings)
        report["ablation"] = {
            "steps": steps,
            "differs_from_default": _default_differences(steps),
        }
        _log.info("rerunning the last kept step on other seeds")
        report["ablation"]["seed_check"] = _in_fresh_process(
            settings, run_seed_check, settings, steps
        )
    if "ours" in systems and not args.no_seed_spread:
        _log.info("refitting ours on other seeds")
        report["seed_spread"] = _in_fresh_process(
            settings, run_seed_spread, settings
        )
    report["meta"] = _meta(settings, argv, time.monotonic() - started)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _write_renderings(report, args.out)
    _log.info("wrote %s in %.0f s", args.out, time.monotonic() - started)
    return 0


def _write_renderings(report: dict, out: Path) -> None:
    """quality.md and quality_recall.png beside the JSON at `out`."""
    markdown_path = out.with_name("quality.md")
    markdown_path.write_text(markdown(report), encoding="utf-8")
    plot_path = out.with_name("quality_recall.png")
    plot_recall(report, plot_path)
    _log.info("wrote %s and %s", markdown_path, plot_path)


if __name__ == "__main__":
    sys.exit(main())
