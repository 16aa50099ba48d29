"""The chain's floor: the two gRPC hops of Retrieve with trivial handlers.

The front server answers Echo by making one unary Echo call to the back
server and returning its reply; the back server returns the request bytes.
Both are built by `serving_common.server.start_server`, as the real services
are (same thread pool, error interceptor, health, reflection), and run as
separate processes, so a load test of the front measures what the Retrieve
chain would cost if the model and the index were free.

    python -m bench.chain_floor back --port 9001
    python -m bench.chain_floor front --port 9000 --backend 127.0.0.1:9001

With --aio both hops are grpc.aio servers instead (handlers on the event
loop, an aio channel outbound, health but no interceptor): the floor an
asyncio rewrite of the services could reach. With --bare they keep the
thread pool but lose the interceptors, which prices the interceptors and
leaves --aio's difference to the event loop alone.
"""

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving_common import logs
from serving_common.server import (
    BoundServer,
    start_server,
    wait_for_termination,
)

_log = logging.getLogger("bench.chain_floor")

SERVICE_NAME = "movie_retrieval.bench.ChainFloor"
ECHO = "Echo"
ECHO_METHOD = f"/{SERVICE_NAME}/{ECHO}"

# The candidate service's channel to the query server uses these keep-alive
# settings; the floor's outbound hop matches them so the two are comparable.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclasses.dataclass
class FloorServer:
    """A running front or back floor server."""

    bound: BoundServer
    _channel: grpc.Channel | None = None

    @property
    def port(self) -> int:
        return self.bound.port

    def stop(self, grace_s: float | None = None) -> None:
        self.bound.stop(grace_s)
        self.close()

    def close(self) -> None:
        """Closes the outbound channel, once the server has stopped."""
        if self._channel is not None:
            self._channel.close()


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _serve(address: str, handler, interceptors: bool = True) -> BoundServer:
    def register(server: grpc.Server) -> None:
        server.add_generic_rpc_handlers([_echo_handlers(handler)])

    bound = start_server(
        address, register, [SERVICE_NAME], interceptors=interceptors
    )
    bound.set_serving(True)
    return bound


def create_back(address: str, interceptors: bool = True) -> FloorServer:
    """Starts the back server: Echo returns the request.

    Args:
      address: host:port; port 0 binds a free port (see `.port`).
      interceptors: False serves without the services' interceptors.

    Raises:
      OSError: the address could not be bound.
    """
    return FloorServer(bound=_serve(address, _echo, interceptors))


def create_front(
    address: str,
    backend: str,
    timeout_s: float = 1.0,
    interceptors: bool = True,
) -> FloorServer:
    """Starts the front server: Echo forwards the request to `backend`.

    Args:
      address: host:port; port 0 binds a free port (see `.port`).
      backend: host:port of a back server.
      timeout_s: deadline of each outbound call, in seconds (the candidate
        service's default deadline towards the query server).
      interceptors: False serves without the services' interceptors.

    Raises:
      OSError: the address could not be bound.
    """
    channel = grpc.insecure_channel(backend, options=_CHANNEL_OPTIONS)
    forward = channel.unary_unary(ECHO_METHOD)

    def echo_via_backend(request: bytes, context) -> bytes:
        return forward(request, timeout=timeout_s)

    try:
        bound = _serve(address, echo_via_backend, interceptors)
    except OSError:
        channel.close()
        raise
    return FloorServer(bound=bound, _channel=channel)


def _echo_handlers(handler) -> grpc.GenericRpcHandler:
    # Handlers without serializers take and return raw bytes: the floor
    # pays for gRPC, not for protobuf.
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME, {ECHO: grpc.unary_unary_rpc_method_handler(handler)}
    )


async def serve_aio(
    role: str,
    address: str,
    backend: str | None,
    timeout_s: float,
    stop: asyncio.Event,
) -> None:
    """Runs an asyncio floor server until `stop` is set.

    Args:
      role: "front" (forwards each Echo to `backend`) or "back".
      address: host:port to listen on.
      backend: host:port of a back server (front only).
      timeout_s: deadline of each outbound call, in seconds.
      stop: set to drain and stop.

    Raises:
      OSError: the address could not be bound.
    """
    channel = None
    if role == "front":
        channel = grpc.aio.insecure_channel(backend, options=_CHANNEL_OPTIONS)
        forward = channel.unary_unary(ECHO_METHOD)

        async def echo(request: bytes, context) -> bytes:
            return await forward(request, timeout=timeout_s)

    else:

        async def echo(request: bytes, context) -> bytes:
            return request

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([_echo_handlers(echo)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"could not bind {address}: is it already in use?")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    _log.info("chain floor %s (aio) listening on %s", role, address)
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)
        if channel is not None:
            await channel.close()


async def _serve_aio_until_signal(args) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve_aio(
        args.role, f"{args.host}:{args.port}", args.backend, args.timeout, stop
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.chain_floor",
        description="Serve one hop of the chain's floor: trivial gRPC "
        "handlers, the front making one call to the back per request.",
    )
    p.add_argument("role", choices=("front", "back"))
    p.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--backend",
        help="host:port of the back server (front only)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1.0,
        help="seconds each outbound call may take (front only; default: "
        "%(default)s)",
    )
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=1.0,
        help="on SIGTERM, time given to running requests "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--aio",
        action="store_true",
        help="serve with grpc.aio instead of the services' thread pool",
    )
    p.add_argument(
        "--bare",
        action="store_true",
        help="the services' thread pool without their interceptors",
    )
    p.add_argument("--log-level", default=None, help="default: INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.role == "front" and not args.backend:
        parser.error("front needs --backend host:port")
    if args.aio and args.bare:
        parser.error("--aio and --bare are different floors; pick one")
    logs.configure(args.log_level)

    if args.aio:
        try:
            asyncio.run(_serve_aio_until_signal(args))
        except OSError as e:
            _log.error("%s", e)
            return 1
        return 0

    address = f"{args.host}:{args.port}"
    try:
        if args.role == "front":
            server = create_front(
                address, args.backend, args.timeout, not args.bare
            )
        else:
            server = create_back(address, not args.bare)
    except OSError as e:
        _log.error("%s", e)
        return 1
    _log.info(
        "chain floor %s listening on port %d%s",
        args.role,
        server.port,
        f", forwarding to {args.backend}" if args.role == "front" else "",
    )
    wait_for_termination(server.bound, args.grace_seconds)
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
