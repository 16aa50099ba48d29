"""Command line: list, roll back and prune published versions.

    python -m model_store list --models-dir build/models
    python -m model_store rollback --models-dir build/models
    python -m model_store prune --models-dir build/models --keep 3
"""

import argparse
import logging
import sys
from pathlib import Path

from model_store import layout
from serving_common import logs

_log = logging.getLogger("model_store")


def _parser() -> argparse.ArgumentParser:
    default = layout.default_models_dir()
    p = argparse.ArgumentParser(
        prog="python -m model_store",
        description="Manage the published model versions.",
    )
    p.add_argument(
        "--models-dir",
        default=default,
        help=f"default: $MODELS_DIR or {default}",
    )
    # Also accepted after the command; SUPPRESS keeps a subcommand's
    # default from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models-dir",
        default=argparse.SUPPRESS,
        help=f"default: $MODELS_DIR or {default}",
    )
    commands = p.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "list", parents=[common], help="print the complete versions"
    )
    rollback = commands.add_parser(
        "rollback",
        parents=[common],
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
        "prune",
        parents=[common],
        help="delete all but the newest versions",
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
        version = versions[-1] if args.version is None else args.version
        if len([v for v in versions if v != version]) < 1:
            _log.error(
                "nothing to roll back to: retiring version %s would leave "
                "no complete version in %s",
                version,
                models_dir,
            )
            return 1
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
