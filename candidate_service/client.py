"""Command line: ask the candidate service for a user's top movies.

    python -m candidate_service.client --user 42 -k 10
"""

import argparse
import os
import sys
from pathlib import Path

import grpc

from candidate_service.api_client import wait_until_serving
from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from serving_common.server import channel_credentials


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m candidate_service.client",
        description="Print a user's top-k movies from the candidate service.",
    )
    p.add_argument(
        "--address",
        default="localhost:50051",
        help="the candidate service, host:port (default: %(default)s)",
    )
    p.add_argument("--user", required=True, help="MovieLens user id")
    p.add_argument("-k", type=int, default=10, help="default: %(default)s")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per call"
    )
    p.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the service to report SERVING",
    )
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="PEM",
        help="connect with TLS, trusting these certificates "
        "(default: plaintext)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        status = _retrieve_and_print(args)
        # Inside the try: a pipe's output is buffered, so a closed reader
        # shows up here rather than at the print calls.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader went away (`... | head -3`): not an error of ours.
        # Point stdout at /dev/null so that the interpreter's own flush at
        # exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls_ca is None:
        return grpc.insecure_channel(args.address)
    try:
        credentials = channel_credentials(args.tls_ca)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return grpc.secure_channel(args.address, credentials)


def _retrieve_and_print(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        if args.wait_ready and not wait_until_serving(
            channel, args.wait_ready
        ):
            print(
                f"{args.address} did not report SERVING within "
                f"{args.wait_ready:.0f} s",
                file=sys.stderr,
            )
            return 1
        stub = pb_grpc.RetrievalServiceStub(channel)
        try:
            response = stub.Retrieve(
                pb.RetrieveRequest(user_id=args.user, k=args.k),
                timeout=args.timeout,
            )
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    movies = "movie" if len(response.movies) == 1 else "movies"
    whose = (
        f"most popular {movies} (user unknown to the model)"
        if response.cold_start
        else f"{movies} for user {args.user}"
    )
    print(
        f"Top {len(response.movies)} {whose} "
        f"(model version {response.model_version}):"
    )
    for rank, movie in enumerate(response.movies, start=1):
        print(f"{rank:3d}. {movie.title}  [id {movie.movie_id}, "
              f"score {movie.score:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
