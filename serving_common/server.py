"""gRPC server wiring shared by both services: bind, health, reflection,
error mapping and a graceful stop on SIGTERM."""

import concurrent.futures
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving_common.errors import ErrorInterceptor

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class BoundServer:
    """A started server and what tests and entry points need of it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...] = ()

    def set_serving(self, serving: bool) -> None:
        """Reports SERVING or NOT_SERVING for the whole server."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # The empty name is the server as a whole, what probes ask by default.
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self, grace_s: float | None = None) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()


def start_server(
    address: str,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    max_workers: int = 16,
    max_in_flight: int | None = None,
) -> BoundServer:
    """Builds, binds and starts a server.

    Args:
      address: host:port to listen on; port 0 picks a free port.
      register: adds the service's servicers to the server.
      service_names: full names of the registered services, for health and
        reflection.
      max_workers: threads handling RPCs.
      max_in_flight: beyond this many RPCs at once, new ones fail at once
        with RESOURCE_EXHAUSTED instead of queueing without bound; None
        for no limit.

    Returns:
      The started server, NOT_SERVING until the caller says otherwise.

    Raises:
      OSError: the address could not be bound.
    """
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[ErrorInterceptor()],
        options=[("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_in_flight,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}: is it already in use?")
    server.start()
    bound = BoundServer(
        server=server,
        port=port,
        health=health_servicer,
        service_names=tuple(service_names),
    )
    bound.set_serving(False)
    return bound


def wait_for_termination(bound: BoundServer, grace_s: float) -> None:
    """Blocks until SIGTERM or SIGINT, then drains and stops the server.

    Health turns NOT_SERVING first so load balancers stop sending; requests
    already running get `grace_s` seconds to finish.
    """
    stop = threading.Event()

    def on_signal(signum, _frame):
        _log.info(
            "%s received: draining for up to %.0f s",
            signal.Signals(signum).name,
            grace_s,
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    bound.stop(grace_s)
    _log.info("stopped")
