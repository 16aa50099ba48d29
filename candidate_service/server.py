"""Wires the candidate service: the gRPC server, health, and the loop that
brings the newest published version into service."""

import logging
import threading

from candidate_service.query_client import QueryClient
from candidate_service.retriever import Retriever
from candidate_service.servicer import RetrievalServiceServicer
from candidate_service.settings import Settings
from candidate_service.versions import (
    ServingVersion,
    VersionRefused,
    load_version,
)
from model_store import layout
from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from serving_common import metrics
from serving_common.errors import ServiceError
from serving_common.server import (
    BoundServer,
    channel_credentials,
    start_server,
)

_log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name


class CandidateServer:
    """A running candidate service.

    Health is NOT_SERVING until a version's index is loaded and a warm-up
    query has gone through the query server with that version.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.query_client = QueryClient(
            settings.query_server,
            None
            if settings.query_server_ca is None
            else channel_credentials(settings.query_server_ca),
        )
        self.retriever = Retriever(self.query_client)
        self._refused: set[int] = set()
        self._healthy = False
        self._waiting_for: int | None = None
        self._stop = threading.Event()

        def register(server):
            pb_grpc.add_RetrievalServiceServicer_to_server(
                RetrievalServiceServicer(
                    self.retriever,
                    settings.query_timeout_s,
                    settings.max_batch,
                ),
                server,
            )

        self.bound: BoundServer = start_server(
            settings.address,
            register,
            [SERVICE_NAME],
            # A thread per request in flight, so that all of them can wait
            # in one coalesced batch.
            max_workers=settings.max_in_flight,
            max_in_flight=settings.max_in_flight,
            tls=settings.tls,
        )
        _log.info(
            "candidate service listening on port %d (%s); models from %s, "
            "query server at %s (%s)",
            self.bound.port,
            "TLS" if settings.tls else "plaintext",
            settings.models_dir,
            settings.query_server,
            "plaintext"
            if settings.query_server_ca is None
            else f"TLS, trusting {settings.query_server_ca}",
        )
        self._watcher = threading.Thread(
            target=self._watch, name="version-watch", daemon=True
        )
        self._watcher.start()

    @property
    def port(self) -> int:
        return self.bound.port

    def stop(self, grace_s: float | None = None) -> None:
        self._stop.set()
        self.bound.stop(grace_s)
        self.query_client.close()

    def _watch(self) -> None:
        waiting_logged = False
        while not self._stop.is_set():
            try:
                latest = layout.latest_version(self.settings.models_dir)
                current = self.retriever.serving
                if latest is None and not waiting_logged:
                    _log.warning(
                        "no complete version under %s yet; waiting",
                        self.settings.models_dir,
                    )
                    waiting_logged = True
                if (
                    latest is not None
                    and latest not in self._refused
                    and (current is None or latest != current.version)
                ):
                    self._bring_up(latest)
                current = self.retriever.serving
                if current is not None:
                    self._check_query_server(current.version)
            except Exception:  # noqa: BLE001 - the watcher must survive
                _log.exception("checking for new versions failed")
            self._stop.wait(self.settings.poll_s)

    def _check_query_server(self, version: int) -> None:
        """Health follows the query server: without it no Retrieve works."""
        try:
            ok = self.query_client.is_available(
                version, self.settings.query_timeout_s
            )
            problem = f"version {version} is not AVAILABLE there"
        except ServiceError as e:
            ok, problem = False, e.message
        if ok != self._healthy:
            if ok:
                _log.info("query server is back; SERVING")
            else:
                _log.warning("NOT_SERVING: %s", problem)
            self._healthy = ok
            self.bound.set_serving(ok)

    def _bring_up(self, version: int) -> None:
        try:
            candidate = load_version(self.settings.models_dir, version)
            self._warm_up(candidate)
        except VersionRefused as e:
            self._refused.add(version)
            _log.error("refusing version %d: %s", version, e)
            self.retriever.not_ready_reason = f"version {version} was refused"
            return
        except ServiceError as e:
            # Usually the query server has not loaded the version yet; the
            # next poll tries again.
            if self._waiting_for != version:
                _log.info("version %d not ready yet: %s", version, e.message)
                self._waiting_for = version
            self.retriever.not_ready_reason = e.message
            return
        self.retriever.swap(candidate)
        metrics.set_serving_version(
            version, candidate.index.size, candidate.index.dimension
        )
        self._healthy = True
        self.bound.set_serving(True)
        _log.info(
            "serving version %d: %d candidates of dimension %d (%s index)",
            version,
            candidate.index.size,
            candidate.index.dimension,
            candidate.index.config.method,
        )

    def _warm_up(self, candidate: ServingVersion) -> None:
        """Checks the version end to end with real queries.

        Raises:
          VersionRefused: the query tower and the index disagree.
          ServiceError: the query server cannot serve the version yet.
        """
        timeout = self.settings.query_timeout_s
        if not self.query_client.is_available(candidate.version, timeout):
            raise ServiceError(
                f"query server at {self.settings.query_server} does not "
                f"report version {candidate.version} AVAILABLE yet"
            )
        users = candidate.warmup_user_ids or ["warmup"]
        queries = self.query_client.embed(users, candidate.version, timeout)
        # Dimension first: a mismatch means the towers and the index are
        # from different models, and the version must never serve.
        if queries.shape[1] != candidate.index.dimension:
            raise VersionRefused(
                f"query tower of version {candidate.version} returns "
                f"dimension {queries.shape[1]}, its index has "
                f"{candidate.index.dimension}"
            )
        candidate.index.search(queries, min(10, candidate.index.size))


def create_server(settings: Settings) -> CandidateServer:
    """Starts a candidate service (see `CandidateServer`)."""
    return CandidateServer(settings)
