"""Command line: train on MovieLens and publish a version.

    python -m trainer --data-dir ../shared/data/ml-100k --models-dir models
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from serving_common import logs
from trainer.config import TrainConfig

_log = logging.getLogger("trainer")


def _parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
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
        default=os.environ.get("MODELS_DIR", "models"),
        help="where versions are published (default: $MODELS_DIR or "
        "%(default)s)",
    )
    p.add_argument(
        "--version",
        type=int,
        default=None,
        help="version number to publish (default: one more than the newest)",
    )
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
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
        config = TrainConfig(
            embedding_dim=args.embedding_dim,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
        )
    except ValueError as e:
        _parser().error(str(e))

    # Imported here so that --help and flag errors answer without the
    # seconds TensorFlow takes to load.
    from model_store.layout import PublishError
    from trainer import movielens
    from trainer.train import train_and_publish

    try:
        data_dir = movielens.resolve_data_dir(
            args.data_dir, args.release, args.cache_dir
        )
        dataset = movielens.load(data_dir)
        result = train_and_publish(
            dataset,
            Path(args.models_dir),
            config,
            version=args.version,
            min_index_recall=args.min_index_recall,
        )
    except (
        movielens.DataFormatError,
        movielens.DownloadError,
        FileNotFoundError,
        PublishError,
    ) as e:
        _log.error("%s", e)
        return 1
    _log.info(
        "published version %d: query tower %s, index %s",
        result.version,
        result.paths.query,
        result.paths.index,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
