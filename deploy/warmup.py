"""Writes TF Serving warm-up records into a published query tower.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord
file of PredictionLog) when it loads a version, so the first real requests
do not pay for TensorFlow's lazy initialisation. The requests are the ones
the candidate service sends: Predict on the query model's serving signature
with the manifest's warm-up users, alone and as one batch.

    python -m deploy.warmup --models-dir /models

The trainer already writes the records into each version before it is
published (trainer/warmup.py); this command adds them to versions published
by an older trainer, and does nothing where they exist.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from model_store import layout
from trainer.warmup import WARMUP_FILE, write_warmup_requests

_log = logging.getLogger("deploy.warmup")

# Used when a manifest names no warm-up users: an unknown user still runs
# the whole tower (through its out-of-vocabulary bucket).
_FALLBACK_USERS = ("warmup",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy.warmup", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("MODELS_DIR", "build/models")),
        help="the trainer's models directory (default: $MODELS_DIR or "
        "%(default)s)",
    )
    p.add_argument(
        "--version",
        type=int,
        default=None,
        help="version to warm (default: the newest complete one)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    version = args.version or layout.latest_version(args.models_dir)
    if version is None:
        _log.error("no complete version under %s", args.models_dir)
        return 1
    paths = layout.VersionPaths(args.models_dir, version)
    if (paths.query / WARMUP_FILE).is_file():
        _log.info("version %d already has warm-up records", version)
        return 0
    try:
        manifest = layout.read_manifest(args.models_dir, version)
        users = manifest.get("warmup_user_ids") or list(_FALLBACK_USERS)
        written = write_warmup_requests(paths.query, users)
    except (OSError, ValueError) as e:
        _log.error(
            "cannot write warm-up records for version %d: %s", version, e
        )
        return 1
    _log.info(
        "wrote warm-up records for version %d (%d users) to %s",
        version,
        len(users),
        written,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
