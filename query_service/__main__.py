"""Command line: serve the query tower over TF Serving's gRPC API.

    python -m query_service --models-dir models --port 8500
"""

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from serving_common import logs

_log = logging.getLogger("query_service")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m query_service",
        description=(
            "Serve the query tower with TensorFlow Serving's gRPC API "
            "(PredictionService, ModelService). Runs tensorflow_model_server "
            "when it is on PATH, otherwise a built-in server with the same "
            "API."
        ),
    )
    p.add_argument(
        "--models-dir",
        default=os.environ.get("MODELS_DIR", "models"),
        help="the trainer's models directory (default: $MODELS_DIR or "
        "%(default)s)",
    )
    p.add_argument("--host", default="0.0.0.0", help="default: %(default)s")
    p.add_argument("--port", type=int, default=8500, help="default: 8500")
    p.add_argument(
        "--backend",
        choices=("auto", "builtin", "tfserving"),
        default="auto",
        help="auto uses tensorflow_model_server when installed "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=2.0,
        help="how often to look for new versions (default: %(default)s)",
    )
    p.add_argument(
        "--keep-versions",
        type=int,
        default=2,
        help="newest versions kept loaded (default: %(default)s)",
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


def _exec_tfserving(binary: str, args) -> None:
    from query_service import tfserving

    config = Path(tempfile.mkdtemp(prefix="query-service-")) / "models.config"
    config.write_text(
        tfserving.model_config(Path(args.models_dir), args.keep_versions)
    )
    argv = tfserving.command(binary, args.port, config, args.poll_seconds)
    _log.info("running %s", " ".join(argv))
    os.execv(binary, argv)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level)

    from query_service import tfserving

    binary = tfserving.find_binary()
    if args.backend == "tfserving" and binary is None:
        _log.error(
            "--backend tfserving: %s is not on PATH; use --backend builtin",
            tfserving.BINARY,
        )
        return 2
    if args.backend != "builtin" and binary is not None:
        _exec_tfserving(binary, args)

    from query_service.server import create_server
    from serving_common.server import wait_for_termination

    _log.info("using the built-in query server (no %s)", tfserving.BINARY)
    try:
        server = create_server(
            f"{args.host}:{args.port}",
            Path(args.models_dir),
            poll_s=args.poll_seconds,
            keep_versions=args.keep_versions,
        )
    except OSError as e:
        _log.error("%s", e)
        return 1
    wait_for_termination(server.bound, args.grace_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
