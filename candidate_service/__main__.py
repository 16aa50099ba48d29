"""Command line: serve Retrieve over gRPC.

    python -m candidate_service --models-dir models --query-server localhost:8500
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from serving_common import logs

_log = logging.getLogger("candidate_service")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m candidate_service",
        description=(
            "Serve movie retrieval (movie_retrieval.v1.RetrievalService) over "
            "gRPC: embed the user with the query server, search the index of "
            "the same model version."
        ),
    )
    p.add_argument(
        "--models-dir",
        default=os.environ.get("MODELS_DIR", "models"),
        help="the trainer's models directory (default: $MODELS_DIR or "
        "%(default)s)",
    )
    p.add_argument("--host", default="0.0.0.0", help="default: %(default)s")
    p.add_argument("--port", type=int, default=50051, help="default: 50051")
    p.add_argument(
        "--query-server",
        default=os.environ.get("QUERY_SERVER", "localhost:8500"),
        help="host:port of the query server (default: $QUERY_SERVER or "
        "%(default)s)",
    )
    p.add_argument(
        "--query-timeout",
        type=float,
        default=1.0,
        help="seconds each query-server call may take (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=2.0,
        help="how often to look for a newer version (default: %(default)s)",
    )
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=5.0,
        help="on SIGTERM, time given to running requests "
        "(default: %(default)s)",
    )
    p.add_argument("--log-level", default=None, help="default: INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level)

    from candidate_service.server import Settings, create_server
    from serving_common.server import wait_for_termination

    settings = Settings(
        address=f"{args.host}:{args.port}",
        models_dir=Path(args.models_dir),
        query_server=args.query_server,
        query_timeout_s=args.query_timeout,
        poll_s=args.poll_seconds,
    )
    try:
        server = create_server(settings)
    except OSError as e:
        _log.error("%s", e)
        return 1
    wait_for_termination(server.bound, args.grace_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
