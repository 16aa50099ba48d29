"""Builds the built-in query server: the API of `tensorflow_model_server`
over the query tower, for machines without that binary."""

import dataclasses
import logging
import threading
from pathlib import Path

from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from query_service.models import ModelRegistry
from query_service.servicer import (
    ModelServiceServicer,
    PredictionServiceServicer,
)
from serving_common.server import BoundServer, ServerTls, start_server

_log = logging.getLogger(__name__)

# Spelled out: tensorflow-serving-api 2.20's prediction_service_pb2 and
# model_service_pb2 fail to import under the upb protobuf runtime (they assign
# a read-only descriptor attribute); the *_pb2_grpc stubs do not need them.
SERVICE_NAMES = (
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
)


@dataclasses.dataclass
class QueryServer:
    """A running built-in query server."""

    bound: BoundServer
    registry: ModelRegistry
    _stop_watching: threading.Event

    @property
    def port(self) -> int:
        return self.bound.port

    def stop(self, grace_s: float | None = None) -> None:
        self._stop_watching.set()
        self.bound.stop(grace_s)


def create_server(
    address: str,
    models_dir: Path,
    poll_s: float = 2.0,
    keep_versions: int = 2,
    tls: ServerTls | None = None,
) -> QueryServer:
    """Loads the newest complete versions and starts serving them.

    Args:
      address: host:port; port 0 binds a free port (see `.port`).
      models_dir: the models directory the trainer publishes into.
      poll_s: how often to look for new versions, in seconds.
      keep_versions: how many of the newest versions stay loaded.
      tls: serve TLS only, with this certificate and key; None for
        plaintext.

    Returns:
      The started server. Health is SERVING once a version is loaded.
    """
    registry = ModelRegistry(models_dir, keep_versions)
    registry.refresh()
    if not registry.versions():
        _log.warning(
            "no complete version under %s yet; waiting for one", models_dir
        )

    def register(server):
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServiceServicer(registry), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServiceServicer(registry), server
        )

    bound = start_server(address, register, SERVICE_NAMES, tls=tls)
    stop = threading.Event()

    def refresh_and_report():
        registry.refresh()
        bound.set_serving(bool(registry.versions()))

    bound.set_serving(bool(registry.versions()))
    _watch(refresh_and_report, poll_s, stop)
    _log.info(
        "query server listening on port %d, serving versions %s from %s",
        bound.port,
        registry.versions(),
        models_dir,
    )
    return QueryServer(bound=bound, registry=registry, _stop_watching=stop)


def _watch(refresh, poll_s: float, stop: threading.Event) -> None:
    def loop():
        while not stop.wait(poll_s):
            try:
                refresh()
            except Exception:  # noqa: BLE001 - keep watching regardless
                _log.exception("refreshing query model versions failed")

    threading.Thread(target=loop, name="model-watch", daemon=True).start()
