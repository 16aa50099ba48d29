"""Operator probes of a gRPC server: its health, and what reflection says it
serves (what `grpcurl list` and `grpcurl describe` show).

    python -m deploy.probe health 127.0.0.1:50051 --wait 60
    python -m deploy.probe list 127.0.0.1:50051

Exit status 0 when the server answered as hoped, 1 otherwise; used by the
container health check and by `make stack`. Imports only gRPC.
"""

import argparse
import sys
import time

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

_POLL_S = 0.5


def _channel(address: str, root_cert: str | None) -> grpc.Channel:
    if root_cert is None:
        return grpc.insecure_channel(address)
    with open(root_cert, "rb") as f:
        credentials = grpc.ssl_channel_credentials(f.read())
    return grpc.secure_channel(address, credentials)


def serving(
    channel: grpc.Channel, service: str, wait_s: float, timeout_s: float
) -> tuple[bool, str]:
    """Asks the health service, again every half second for up to
    `wait_s` seconds, whether `service` is SERVING.

    Returns:
      Whether it is, and the last answer or error, for people.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            status = stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=timeout_s,
            ).status
            answer = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        except grpc.RpcError as e:
            status, answer = None, f"{e.code().name}: {e.details()}"
        if status == health_pb2.HealthCheckResponse.SERVING:
            return True, answer
        if time.monotonic() >= deadline:
            return False, answer
        time.sleep(_POLL_S)


def describe(channel: grpc.Channel) -> list[str]:
    """Lists the services reflection names, each with its methods resolved
    through the descriptors reflection serves.

    Raises:
      grpc.RpcError: reflection could not be asked.
      KeyError: it names a service it cannot describe.
    """
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    lines = []
    for name in sorted(database.get_services()):
        lines.append(name)
        for method in pool.FindServiceByName(name).methods:
            lines.append(
                f"  rpc {method.name}({method.input_type.full_name}) "
                f"returns ({method.output_type.full_name})"
            )
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy.probe", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("check", choices=("health", "list"))
    p.add_argument("address", help="host:port of the server")
    p.add_argument(
        "--service",
        default="",
        help="health: the service to ask about (default: the whole server)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="health: keep asking this long for SERVING (default: ask once)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds per call (default: %(default)s)",
    )
    p.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE",
        help="connect with TLS, trusting this PEM certificate",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with _channel(args.address, args.tls_ca) as channel:
        if args.check == "health":
            ok, answer = serving(channel, args.service, args.wait, args.timeout)
            print(f"{args.address} {args.service or '(server)'}: {answer}")
            return 0 if ok else 1
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            print(
                f"{args.address}: not reachable within {args.timeout} s",
                file=sys.stderr,
            )
            return 1
        try:
            lines = describe(channel)
        except (grpc.RpcError, KeyError) as e:
            print(f"{args.address}: reflection failed: {e}", file=sys.stderr)
            return 1
        print("\n".join(lines))
        return 0


if __name__ == "__main__":
    sys.exit(main())
