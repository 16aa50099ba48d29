"""gRPC server wiring shared by both services: bind (optionally with TLS),
health, reflection, metrics, error mapping and a graceful stop on SIGTERM."""

import argparse
import concurrent.futures
import dataclasses
import importlib
import logging
import signal
import threading
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from model_store import layout
from serving_common import logs
from serving_common.errors import ErrorInterceptor
from serving_common.metrics import MetricsInterceptor

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServerTls:
    """The files that turn on TLS for a server.

    Attributes:
      cert_chain: PEM certificate chain the server presents, its own
        certificate first.
      private_key: PEM private key of that certificate.
    """

    cert_chain: Path
    private_key: Path

    def credentials(self) -> grpc.ServerCredentials:
        """Reads both files.

        Raises:
          ValueError: a file cannot be read; the message names it.
        """
        pems = []
        for what, path in (
            ("certificate", self.cert_chain),
            ("private key", self.private_key),
        ):
            try:
                pems.append(Path(path).read_bytes())
            except OSError as e:
                raise ValueError(
                    f"cannot read the TLS {what} {path}: {e.strerror}"
                ) from e
        chain, key = pems
        return grpc.ssl_server_credentials([(key, chain)])


def channel_credentials(root_certificates: Path) -> grpc.ChannelCredentials:
    """Client credentials trusting the PEM certificates in a file: a
    private CA's, or a self-signed server's.

    Raises:
      ValueError: the file cannot be read; the message names it.
    """
    try:
        pem = Path(root_certificates).read_bytes()
    except OSError as e:
        raise ValueError(
            f"cannot read the TLS CA certificates {root_certificates}: "
            f"{e.strerror}"
        ) from e
    return grpc.ssl_channel_credentials(pem)


def add_server_arguments(
    parser: argparse.ArgumentParser, port: int
) -> None:
    """Adds the flags both servers share: --models-dir, --host, --port and
    --grace-seconds."""
    parser.add_argument(
        "--models-dir",
        default=layout.default_models_dir(),
        help="the trainer's models directory (default: $MODELS_DIR or "
        "%(default)s)",
    )
    parser.add_argument(
        "--host", default="0.0.0.0", help="default: %(default)s"
    )
    parser.add_argument(
        "--port", type=int, default=port, help="default: %(default)s"
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=5.0,
        help="on SIGTERM, time given to running requests "
        "(default: %(default)s)",
    )


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --tls-cert and --tls-key, read back by `tls_from_args`."""
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="PEM certificate chain: serve TLS only (needs --tls-key)",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=None,
        help="PEM private key of --tls-cert",
    )


def tls_from_args(args: argparse.Namespace) -> ServerTls | None:
    """The TLS files given by `add_tls_arguments`' flags, or None.

    Raises:
      ValueError: only one of the two flags was given.
    """
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError(
            "--tls-cert and --tls-key go together: give both to serve TLS, "
            "or neither for plaintext"
        )
    if args.tls_cert is None:
        return None
    return ServerTls(cert_chain=args.tls_cert, private_key=args.tls_key)


def parse_server_args(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, ServerTls | None]:
    """Parses a server's flags, checks the TLS pair and configures logging,
    the start every server entry point shares.

    Returns:
      (args, tls): the flags, and the TLS files or None for plaintext.
    """
    args = parser.parse_args(argv)
    try:
        tls = tls_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    logs.configure_from(args)
    return args, tls


@dataclasses.dataclass
class BoundServer:
    """A started server and what tests and entry points need of it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...] = ()
    tls: bool = False

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
    tls: ServerTls | None = None,
    interceptors: bool = True,
) -> BoundServer:
    """Builds, binds and starts a server.

    Every unary RPC is counted and timed (see `serving_common.metrics`);
    the figures are exported only where an entry point serves them.

    Args:
      address: host:port to listen on; port 0 picks a free port.
      register: adds the service's servicers to the server.
      service_names: full names of the registered services, for health and
        reflection.
      max_workers: threads handling RPCs.
      max_in_flight: beyond this many RPCs at once, new ones fail at once
        with RESOURCE_EXHAUSTED instead of queueing without bound; None
        for no limit.
      tls: serve TLS only, with this certificate and key; None for
        plaintext.
      interceptors: False leaves out the metrics and the error mapping;
        only the serving benchmark's floor does, to price them.

    Returns:
      The started server, NOT_SERVING until the caller says otherwise.

    Raises:
      OSError: the address could not be bound.
      ValueError: a TLS file cannot be read.
    """
    credentials = tls.credentials() if tls else None
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers),
        # Metrics outermost, so what they record includes the error mapping
        # and its status code.
        interceptors=[MetricsInterceptor(), ErrorInterceptor()]
        if interceptors
        else [],
        options=[("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_in_flight,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _describe_for_reflection(service_names)
    reflection.enable_server_reflection(
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}: is it already in use?")
    server.start()
    bound = BoundServer(
        server=server,
        port=port,
        health=health_servicer,
        service_names=tuple(service_names),
        tls=credentials is not None,
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


# Reflection answers from the default descriptor pool, which a service's
# descriptors enter when its *_pb2 module is imported. tensorflow-serving-api
# 2.20's prediction_service_pb2 and model_service_pb2 cannot be imported under
# the upb protobuf runtime (they assign a read-only descriptor attribute), so
# those two files are rebuilt from their *_pb2_grpc modules, which import.
# Where the originals do import (first), they are found and nothing is
# rebuilt.
_REBUILT_FROM_STUBS = {
    "tensorflow.serving.PredictionService": (
        "tensorflow_serving.apis.prediction_service_pb2_grpc"
    ),
    "tensorflow.serving.ModelService": (
        "tensorflow_serving.apis.model_service_pb2_grpc"
    ),
}
_pool_lock = threading.Lock()


def _describe_for_reflection(service_names: Sequence[str]) -> None:
    pool = descriptor_pool.Default()
    with _pool_lock:
        for name in service_names:
            try:
                pool.FindServiceByName(name)
                continue
            except KeyError:
                pass
            module = _REBUILT_FROM_STUBS.get(name)
            if module is None:
                _log.debug(
                    "reflection lists %s but cannot describe it: no "
                    "descriptor for it is loaded",
                    name,
                )
                continue
            pool.AddSerializedFile(
                _file_from_stubs(name, module).SerializeToString()
            )


class _Method(typing.NamedTuple):
    client_streaming: bool
    server_streaming: bool
    response: type


class _RecordingChannel:
    """Stands in for a channel while a generated stub is built, keeping
    each method's kind and response class."""

    def __init__(self):
        self.methods: dict[str, _Method] = {}

    def _recorder(self, client_streaming: bool, server_streaming: bool):
        def record(
            method,
            request_serializer=None,
            response_deserializer=None,
            **_options,
        ):
            # FromString is a class method: its __self__ is the class.
            self.methods[method.rsplit("/", 1)[1]] = _Method(
                client_streaming,
                server_streaming,
                response_deserializer.__self__,
            )

        return record

    def __getattr__(self, kind: str):
        streaming = {
            "unary_unary": (False, False),
            "unary_stream": (False, True),
            "stream_unary": (True, False),
            "stream_stream": (True, True),
        }
        if kind not in streaming:
            raise AttributeError(kind)
        return self._recorder(*streaming[kind])


class _RecordingServer:
    """Stands in for a server while servicers are added, keeping the
    handlers."""

    def __init__(self):
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers):
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service, method_handlers):
        self.handlers.append(
            grpc.method_handlers_generic_handler(service, method_handlers)
        )


@dataclasses.dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: tuple = ()


def _file_from_stubs(
    service_name: str, module_name: str
) -> descriptor_pb2.FileDescriptorProto:
    """Rebuilds the .proto file of a service from its generated gRPC module.

    The stub gives the methods and their response classes; the servicer's
    handlers give the request classes. The file is named as the original
    (`a/b/c.proto` for module `a.b.c_pb2_grpc`) and depends on the files of
    the message types.
    """
    module = importlib.import_module(module_name)
    package, _, short_name = service_name.rpartition(".")

    channel = _RecordingChannel()
    getattr(module, f"{short_name}Stub")(channel)
    server = _RecordingServer()
    servicer = getattr(module, f"{short_name}Servicer")()
    getattr(module, f"add_{short_name}Servicer_to_server")(servicer, server)

    proto = descriptor_pb2.FileDescriptorProto(
        name=module_name.removesuffix("_pb2_grpc").replace(".", "/") + ".proto",
        package=package,
        syntax="proto3",
    )
    service = proto.service.add(name=short_name)
    dependencies = set()
    for name, method in channel.methods.items():
        request = _request_class(server.handlers, f"/{service_name}/{name}")
        service.method.add(
            name=name,
            input_type="." + request.DESCRIPTOR.full_name,
            output_type="." + method.response.DESCRIPTOR.full_name,
            client_streaming=method.client_streaming,
            server_streaming=method.server_streaming,
        )
        dependencies |= {
            request.DESCRIPTOR.file.name,
            method.response.DESCRIPTOR.file.name,
        }
    proto.dependency.extend(sorted(dependencies))
    return proto


def _request_class(handlers: list[grpc.GenericRpcHandler], method: str):
    for handler in handlers:
        method_handler = handler.service(_CallDetails(method=method))
        if method_handler is not None:
            return method_handler.request_deserializer.__self__
    raise LookupError(f"no handler registered for {method}")
