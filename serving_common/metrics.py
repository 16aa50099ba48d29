"""Prometheus metrics of the services: what is served, how often, how fast
and with which outcome.

Every server built by `serving_common.server.start_server` counts and times
its unary RPCs by method and status code. The candidate service also reports
the version it serves and, through `instrument_channel`, its calls to the
query server. Metrics live in prometheus_client's process-wide registry and
are exported over HTTP only by entry points that call `serve_metrics`.

Known shortcoming: RPCs refused because `max_in_flight` RPCs are already
running never reach an interceptor (gRPC rejects them first), so they are
not counted here; the caller sees RESOURCE_EXHAUSTED.
"""

import dataclasses
import time
import wsgiref.simple_server

import grpc
import prometheus_client

# From half a millisecond (a warm lookup) to ten seconds (well past any
# deadline the services use), roughly 2.5x apart.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_RPC_LABELS = ("grpc_service", "grpc_method", "grpc_code")

SERVER_HANDLED = prometheus_client.Counter(
    "grpc_server_handled",
    "Unary RPCs completed by the server, by method and status code.",
    _RPC_LABELS,
)
SERVER_HANDLING_SECONDS = prometheus_client.Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving a unary RPC to its answer, in seconds, by method "
    "and status code.",
    _RPC_LABELS,
    buckets=LATENCY_BUCKETS_S,
)
CLIENT_HANDLING_SECONDS = prometheus_client.Histogram(
    "grpc_client_handling_seconds",
    "Time of outbound unary RPCs (the candidate service's calls to the "
    "query server), in seconds, by method and status code.",
    _RPC_LABELS,
    buckets=LATENCY_BUCKETS_S,
)
MODEL_VERSION = prometheus_client.Gauge(
    "movie_retrieval_model_version",
    "The model version being served; 0 until one is.",
)
INDEX_VECTORS = prometheus_client.Gauge(
    "movie_retrieval_index_vectors",
    "Candidate movies in the index being served.",
)
INDEX_DIMENSION = prometheus_client.Gauge(
    "movie_retrieval_index_dimension",
    "Dimension of the embeddings in the index being served.",
)


def _split_method(method: str | bytes) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    if isinstance(method, bytes):
        method = method.decode("utf-8")
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times unary RPCs by method and status code.

    Streaming RPCs (health watches, reflection) pass through unmeasured: a
    watch stays open for as long as the caller likes, which would say
    nothing about latency.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        behaviour = handler.unary_unary

        def timed(request, context):
            start = time.perf_counter()
            failed = True
            try:
                response = behaviour(request, context)
                failed = False
                return response
            finally:
                # abort() and set_code() leave the code on the context; an
                # exception without one reaches the caller as UNKNOWN.
                code = context.code() or (
                    grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
                )
                labels = (service, method, code.name)
                SERVER_HANDLED.labels(*labels).inc()
                SERVER_HANDLING_SECONDS.labels(*labels).observe(
                    time.perf_counter() - start
                )

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _ClientMetricsInterceptor(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation, client_call_details, request):
        start = time.perf_counter()
        service, method = _split_method(client_call_details.method)

        def observe(call):
            CLIENT_HANDLING_SECONDS.labels(
                service, method, call.code().name
            ).observe(time.perf_counter() - start)

        outcome = continuation(client_call_details, request)
        # Blocking calls are done here already and run the callback at once;
        # futures run it when they finish.
        outcome.add_done_callback(observe)
        return outcome


def instrument_channel(channel: grpc.Channel) -> grpc.Channel:
    """Wraps a client channel so its unary calls are timed by method and
    status code (`grpc_client_handling_seconds`)."""
    return grpc.intercept_channel(channel, _ClientMetricsInterceptor())


def set_serving_version(version: int, size: int, dimension: int) -> None:
    """Reports the version now served.

    Args:
      version: the model version.
      size: candidate movies in its index.
      dimension: the embeddings' dimension.
    """
    MODEL_VERSION.set(version)
    INDEX_VECTORS.set(size)
    INDEX_DIMENSION.set(dimension)


@dataclasses.dataclass
class MetricsServer:
    """The HTTP endpoint serving the metrics at /metrics."""

    port: int
    _httpd: wsgiref.simple_server.WSGIServer

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(host: str, port: int) -> MetricsServer:
    """Serves the process's metrics over HTTP from a daemon thread.

    Args:
      host: address to listen on.
      port: port to listen on; 0 picks a free one (see `.port`).

    Raises:
      OSError: the address could not be bound.
    """
    httpd, _thread = prometheus_client.start_http_server(port, addr=host)
    return MetricsServer(port=httpd.server_port, _httpd=httpd)
