"""Command line: train on MovieLens and publish a version.

    python -m trainer --data-dir ../shared/data/ml-100k \
        --models-dir build/models
"""

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from model_store import layout
from serving_common import logs
from trainer import config as config_module
from trainer.config import TrainConfig

_log = logging.getLogger("trainer")


# TrainConfig fields with a flag each, by kind. Every flag defaults to "not
# given", so that --tutorial can start from the tutorial's settings and the
# flags given still override them.
_INT_FIELDS = (
    "embedding_dim",
    "epochs",
    "batch_size",
    "seed",
    "early_stopping_patience",
)
_FLOAT_FIELDS = (
    "learning_rate",
    "test_fraction",
    "validation_fraction",
    "weight_decay",
    "history_dropout",
    "temperature",
)
_CHOICE_FIELDS = {
    "model": config_module.MODELS,
    "optimizer": config_module.OPTIMIZERS,
    "loss": config_module.LOSSES,
    "distribution": config_module.DISTRIBUTIONS,
}
_BOOL_FIELDS = (
    "user_embedding",
    "history",
    "movie_features",
    "item_bias",
    "logq_correction",
    "remove_accidental_hits",
)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its help showing the default."""
    defaults = TrainConfig()
    group = p.add_argument_group(
        "training settings",
        "TrainConfig fields (see trainer/config.py); defaults are the "
        "shipped model's",
    )
    group.add_argument(
        "--tutorial",
        action="store_true",
        help="start from the TensorFlow Recommenders tutorial's settings "
        "(TrainConfig.tutorial()) instead of the defaults",
    )
    for field in _INT_FIELDS + _FLOAT_FIELDS:
        group.add_argument(
            _flag(field),
            type=int if field in _INT_FIELDS else float,
            default=None,
            help=f"default: {getattr(defaults, field)}",
        )
    for field, choices in _CHOICE_FIELDS.items():
        group.add_argument(
            _flag(field),
            choices=choices,
            default=None,
            help=f"default: {getattr(defaults, field)}",
        )
    for field in _BOOL_FIELDS:
        group.add_argument(
            _flag(field),
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"default: {getattr(defaults, field)}",
        )


def _config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags describe.

    Raises:
      ValueError: the settings are invalid together.
    """
    fields = _INT_FIELDS + _FLOAT_FIELDS + tuple(_CHOICE_FIELDS) + _BOOL_FIELDS
    given = {
        field: getattr(args, field)
        for field in fields
        if getattr(args, field) is not None
    }
    base = TrainConfig.tutorial() if args.tutorial else TrainConfig()
    return dataclasses.replace(base, **given)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer",
        description=(
            "Train the two-tower retrieval model on MovieLens and publish a "
            "version (query tower, candidate tower, index) under the models "
            "directory."
        ),
    )
    p.add_argument(
        "--data-dir",
        default=os.environ.get("MOVIELENS_DATA_DIR"),
        help="folder with the MovieLens files (default: $MOVIELENS_DATA_DIR; "
        "with neither, the release is downloaded into --cache-dir)",
    )
    p.add_argument(
        "--release",
        default="ml-100k",
        help="MovieLens release to download when no folder is given "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where downloads are kept (default: ~/.cache/movie-retrieval)",
    )
    p.add_argument(
        "--models-dir",
        default=layout.default_models_dir(),
        help="where versions are published (default: $MODELS_DIR or "
        "%(default)s)",
    )
    p.add_argument(
        "--version",
        type=int,
        default=None,
        help="version number to publish, above every existing one "
        "(default: one more than the newest)",
    )
    p.add_argument(
        "--keep-versions",
        type=int,
        default=3,
        help="after publishing, delete all but this many newest versions, "
        "kept for rollback (default: %(default)s)",
    )
    _add_config_flags(p)
    p.add_argument(
        "--min-index-recall",
        type=float,
        default=0.95,
        help="refuse to publish when the index's recall@10 against exact "
        "search is below this (default: %(default)s)",
    )
    p.add_argument("--log-level", default=None, help="default: INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        config = _config(args)
    except ValueError as e:
        _parser().error(str(e))

    # Imported here so that --help and flag errors answer without the
    # seconds TensorFlow takes to load.
    from trainer import movielens
    from trainer.train import train_and_publish

    models_dir = Path(args.models_dir)
    if args.version is not None:
        # TF Serving serves the highest number, and numbers are never
        # reused: a new version must come after every existing one.
        lowest = layout.next_version(models_dir)
        if args.version < lowest:
            _parser().error(
                f"--version must be at least {lowest}: versions up to "
                f"{lowest - 1} exist or existed in {models_dir}"
            )

    try:
        data_dir = movielens.resolve_data_dir(
            args.data_dir, args.release, args.cache_dir
        )
        dataset = movielens.load(data_dir)
    except (movielens.DownloadError, FileNotFoundError, ValueError) as e:
        # ValueError covers a malformed row (DataFormatError) and a release
        # name that is not one.
        _log.error("%s", e)
        return 1
    try:
        result = train_and_publish(
            dataset,
            models_dir,
            config,
            version=args.version,
            min_index_recall=args.min_index_recall,
        )
    except layout.PublishError as e:
        _log.error("%s", e)
        return 1
    _log.info(
        "published version %d: query tower %s, index %s",
        result.version,
        result.paths.query,
        result.paths.index,
    )
    layout.prune(models_dir, args.keep_versions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
