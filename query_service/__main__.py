"""Command line: serve the query tower over TF Serving's gRPC API.

    python -m query_service --models-dir build/models --port 8500
"""

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from serving_common import logs
from serving_common.server import (
    ServerTls,
    add_server_arguments,
    add_tls_arguments,
    parse_server_args,
    wait_for_termination,
)

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
    add_server_arguments(p, port=8500)
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
        "--tf-threads",
        type=int,
        default=1,
        help="TensorFlow threads between and within ops, for the built-in "
        "server; 0 leaves TensorFlow's default of one per core "
        "(default: %(default)s)",
    )
    add_tls_arguments(p)
    logs.add_arguments(p)
    return p


def _text_proto_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n") + '"'


def ssl_config(tls: ServerTls) -> str:
    """TF Serving's SSLConfig (text proto) for `--ssl_config_file`: it takes
    the PEM contents, not their paths.

    Raises:
      ValueError: a file cannot be read.
    """
    pems = {}
    for field, path in (
        ("server_cert", tls.cert_chain),
        ("server_key", tls.private_key),
    ):
        try:
            pems[field] = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the TLS file {path}: {e}") from e
    return "".join(
        f"{field}: {_text_proto_string(pem)}\n" for field, pem in pems.items()
    )


def _exec_tfserving(binary: str, args, tls: ServerTls | None) -> None:
    from query_service import tfserving

    folder = Path(tempfile.mkdtemp(prefix="query-service-"))
    config = folder / "models.config"
    config.write_text(
        tfserving.model_config(Path(args.models_dir), args.keep_versions)
    )
    argv = tfserving.command(binary, args.port, config, args.poll_seconds)
    if tls is not None:
        # mkdtemp's folder is private to this user; the key stays there.
        ssl = folder / "ssl.config"
        ssl.write_text(ssl_config(tls))
        argv.append(f"--ssl_config_file={ssl}")
    _log.info("running %s", " ".join(argv))
    os.execv(binary, argv)


def main(argv: list[str] | None = None) -> int:
    args, tls = parse_server_args(_parser(), argv)
    if args.tf_threads > 0:
        # A query-tower call is about a tenth of a millisecond of work;
        # handing it to TensorFlow's pool threads costs more than it saves
        # (measured in the README's performance section). TensorFlow reads
        # these once, when first imported, which has not happened yet.
        os.environ["TF_NUM_INTEROP_THREADS"] = str(args.tf_threads)
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.tf_threads)

    from query_service import tfserving

    binary = tfserving.find_binary()
    if args.backend == "tfserving" and binary is None:
        _log.error(
            "--backend tfserving: %s is not on PATH; use --backend builtin",
            tfserving.BINARY,
        )
        return 2
    if args.backend != "builtin" and binary is not None:
        try:
            _exec_tfserving(binary, args, tls)
        except ValueError as e:
            _log.error("%s", e)
            return 1

    from query_service.server import create_server

    _log.info("using the built-in query server (no %s)", tfserving.BINARY)
    try:
        server = create_server(
            f"{args.host}:{args.port}",
            Path(args.models_dir),
            poll_s=args.poll_seconds,
            keep_versions=args.keep_versions,
            tls=tls,
        )
    except (OSError, ValueError) as e:
        _log.error("%s", e)
        return 1
    if tls is not None:
        _log.info("serving TLS only, certificate %s", tls.cert_chain)
    wait_for_termination(server.bound, args.grace_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
