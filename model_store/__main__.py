"""Command line: list, roll back and prune published versions.

    python -m model_store list --models-dir models
    python -m model_store rollback --models-dir models
    python -m model_store prune --models-dir models --keep 3
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from model_store import layout
from serving_common import logs

_log = logging.getLogger("model_store")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model_store",
        description="Manage the published model versions.",
    )
    p.add_argument(
        "--models-dir",
        default=os.environ.get("MODELS_DIR", "models"),
        help="default: $MODELS_DIR or %(default)s",
    )
    commands = p.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print the complete versions")
    rollback = commands.add_parser(
        "rollback",
        help="retire the newest version so both services return to the "
        "previous one within their poll interval",
    )
    rollback.add_argument(
        "--version",
        type=int,
        default=None,
        help="the version to retire (default: the newest)",
    )
    prune = commands.add_parser(
        "prune", help="delete all but the newest versions"
    )
    prune.add_argument("--keep", type=int, default=3)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure()
    models_dir = Path(args.models_dir)
    versions = layout.complete_versions(models_dir)

    if args.command == "list":
        for version in versions:
            manifest = layout.read_manifest(models_dir, version)
            print(
                f"{version}\t{manifest.get('created_at', '?')}\t"
                f"{manifest.get('dataset', {}).get('name', '?')}"
            )
        return 0

    if args.command == "rollback":
        if len(versions) < 2 and args.version is None:
            _log.error(
                "nothing to roll back to: %d complete version(s) in %s",
                len(versions),
                models_dir,
            )
            return 1
        version = args.version or versions[-1]
        try:
            layout.retire(models_dir, version)
        except layout.PublishError as e:
            _log.error("%s", e)
            return 1
        _log.info(
            "rolled back: version %d retired, newest is now %s",
            version,
            layout.latest_version(models_dir),
        )
        return 0

    try:
        layout.prune(models_dir, args.keep)
    except ValueError as e:
        _log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
