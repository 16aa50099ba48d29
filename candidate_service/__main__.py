"""Command line: serve Retrieve over gRPC.

    python -m candidate_service --models-dir build/models \
        --query-server localhost:8500
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from candidate_service.settings import Settings
from serving_common import logs, metrics
from serving_common.server import (
    add_server_arguments,
    add_tls_arguments,
    parse_server_args,
    wait_for_termination,
)

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
    add_server_arguments(p, port=50051)
    p.add_argument(
        "--query-server",
        default=os.environ.get("QUERY_SERVER", "localhost:8500"),
        help="host:port of the query server (default: $QUERY_SERVER or "
        "%(default)s)",
    )
    p.add_argument(
        "--query-server-ca",
        type=Path,
        default=None,
        metavar="PEM",
        help="call the query server over TLS, trusting these certificates "
        "(default: plaintext)",
    )
    p.add_argument(
        "--query-timeout",
        type=float,
        default=1.0,
        help="seconds each query-server call may take (default: %(default)s)",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=Settings.max_in_flight,
        help="requests handled at once; more are refused with "
        "RESOURCE_EXHAUSTED (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=Settings.max_batch,
        help="most concurrent Retrieve calls sent to the query server as "
        "one batch (default: %(default)s)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=2.0,
        help="how often to look for a newer version (default: %(default)s)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics, on "
        "--host (default: not served)",
    )
    add_tls_arguments(p)
    logs.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args, tls = parse_server_args(_parser(), argv)

    from candidate_service.server import create_server

    settings = Settings(
        address=f"{args.host}:{args.port}",
        models_dir=Path(args.models_dir),
        query_server=args.query_server,
        query_timeout_s=args.query_timeout,
        poll_s=args.poll_seconds,
        max_in_flight=args.max_in_flight,
        max_batch=args.max_batch,
        tls=tls,
        query_server_ca=args.query_server_ca,
    )
    try:
        server = create_server(settings)
    except (OSError, ValueError) as e:
        _log.error("%s", e)
        return 1
    if tls is not None:
        _log.info("serving TLS only, certificate %s", tls.cert_chain)
    if args.metrics_port is not None:
        try:
            endpoint = metrics.serve_metrics(args.host, args.metrics_port)
        except OSError as e:
            _log.error(
                "cannot serve metrics on port %d: %s", args.metrics_port, e
            )
            server.stop(0)
            return 1
        _log.info("metrics at http://%s:%d/metrics", args.host, endpoint.port)
    wait_for_termination(server.bound, args.grace_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
