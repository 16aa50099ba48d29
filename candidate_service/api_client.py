"""A typed Python client of movie_retrieval.v1.RetrievalService, for other
services to import.

    with RetrievalClient("retrieval:50051") as client:
        result = client.retrieve("42", 10, timeout=0.5)
        for movie in result.movies:
            print(movie.title, movie.score)

Answers come back as frozen dataclasses; failures as `RetrievalError`
subclasses named after the condition, each carrying the gRPC status code.
It imports gRPC and the generated stubs only, never TensorFlow.
"""

import dataclasses
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class ScoredMovie:
    """One retrieved movie.

    Attributes:
      movie_id: the MovieLens movie id.
      title: the title with its year, for example "Toy Story (1995)".
      score: the model's score; only the order is meaningful.
    """

    movie_id: int
    title: str
    score: float


@dataclasses.dataclass(frozen=True)
class Retrieval:
    """One user's ranked movies, best first.

    Attributes:
      movies: at most k distinct movies, by descending score.
      model_version: the published model version that answered.
      cold_start: the user is unknown to that version; the movies are the
        most popular ones.
    """

    movies: tuple[ScoredMovie, ...]
    model_version: int
    cold_start: bool


@dataclasses.dataclass(frozen=True)
class RetrieveQuery:
    """One user's request within `RetrievalClient.batch_retrieve`; the
    fields are those of `RetrievalClient.retrieve`."""

    user_id: str
    k: int
    exclude_seen: bool = False
    strict: bool = False


class RetrievalError(Exception):
    """The service, or the way to it, failed a call.

    Attributes:
      code: the gRPC status code.
      message: the status details: what was wrong, as the service put it.
      retryable: whether the same call may succeed later (with backoff).
    """

    retryable = False

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidRequest(RetrievalError):
    """A field is outside its documented range (INVALID_ARGUMENT); the
    message names it and the limit."""


class UserNotFound(RetrievalError):
    """`strict` was set and the model version does not know the user
    (NOT_FOUND)."""


class ServiceUnavailable(RetrievalError):
    """The service, or the query server behind it, cannot answer now, or
    no version is loaded yet (UNAVAILABLE)."""

    retryable = True


class Overloaded(RetrievalError):
    """The service is at its limit of requests in flight
    (RESOURCE_EXHAUSTED)."""

    retryable = True


class DeadlineExceeded(RetrievalError):
    """No answer within the call's timeout (DEADLINE_EXCEEDED)."""


_ERRORS_BY_CODE: dict[grpc.StatusCode, type[RetrievalError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: UserNotFound,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def error_for(code: grpc.StatusCode, message: str) -> RetrievalError:
    """The typed exception for a failed call's status; codes without a
    class of their own (INTERNAL, ...) give a plain `RetrievalError`."""
    return _ERRORS_BY_CODE.get(code, RetrievalError)(code, message)


def _retrieval(response: pb.RetrieveResponse) -> Retrieval:
    return Retrieval(
        movies=tuple(
            ScoredMovie(movie_id=m.movie_id, title=m.title, score=m.score)
            for m in response.movies
        ),
        model_version=response.model_version,
        cold_start=response.cold_start,
    )


def _request(query: RetrieveQuery) -> pb.RetrieveRequest:
    return pb.RetrieveRequest(
        user_id=query.user_id,
        k=query.k,
        exclude_seen=query.exclude_seen,
        strict=query.strict,
    )


def wait_until_serving(channel: grpc.Channel, timeout_s: float) -> bool:
    """Follows the standard health service until it reports SERVING.

    Args:
      channel: a channel to the service.
      timeout_s: seconds to wait at most.

    Returns:
      True once SERVING; False if it was not by then.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        for update in stub.Watch(
            health_pb2.HealthCheckRequest(service=""),
            timeout=timeout_s,
            wait_for_ready=True,
        ):
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                return True
    except grpc.RpcError:
        return False
    return False


class RetrievalClient:
    """Calls a candidate service over one long-lived channel.

    Thread-safe; make one per process and share it. gRPC reconnects the
    channel on its own when the service comes back.

    Args:
      address: host:port of the candidate service.
      tls: connect with TLS, trusting the system's root certificates unless
        `root_certificates` is given.
      root_certificates: PEM certificates to trust instead (a private CA or
        a self-signed server certificate); implies TLS.
      default_timeout_s: the deadline of calls made without `timeout=`.
    """

    def __init__(
        self,
        address: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        if default_timeout_s <= 0:
            raise ValueError(
                f"default_timeout_s must be positive, got {default_timeout_s}"
            )
        self.address = address
        self._default_timeout_s = default_timeout_s
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            self._channel = grpc.secure_channel(address, credentials)
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.RetrievalServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request, timeout: float | None):
        try:
            return method(
                request,
                timeout=self._default_timeout_s if timeout is None else timeout,
            )
        except grpc.RpcError as e:
            raise error_for(e.code(), e.details() or "") from e

    def retrieve(
        self,
        user_id: str,
        k: int,
        *,
        exclude_seen: bool = False,
        strict: bool = False,
        timeout: float | None = None,
    ) -> Retrieval:
        """The top `k` movies for one user.

        Args:
          user_id: the MovieLens user id, for example "42"; 1 to 128 bytes.
          k: how many movies; 1 to 1000 and at most the catalogue's size.
          exclude_seen: leave out movies the user has already rated.
          strict: raise `UserNotFound` for an unknown user instead of
            answering with the most popular movies.
          timeout: seconds the call may take; None for the client's default.

        Raises:
          InvalidRequest, UserNotFound, ServiceUnavailable, Overloaded,
          DeadlineExceeded: as named; RetrievalError: any other failure.
        """
        query = RetrieveQuery(user_id, k, exclude_seen, strict)
        return _retrieval(
            self._call(self._stub.Retrieve, _request(query), timeout)
        )

    def batch_retrieve(
        self, queries: Sequence[RetrieveQuery], *, timeout: float | None = None
    ) -> list[Retrieval]:
        """Answers 1 to 256 users in one call, all from one model version.

        Args:
          queries: the users' requests.
          timeout: seconds the call may take; None for the client's default.

        Returns:
          One `Retrieval` per query, in the same order.

        Raises:
          InvalidRequest: a query is invalid (the message names it as
            requests[i]), or there are too many or none.
          ServiceUnavailable, Overloaded, DeadlineExceeded: as named;
          RetrievalError: any other failure.
        """
        request = pb.BatchRetrieveRequest(
            requests=[_request(q) for q in queries]
        )
        response = self._call(self._stub.BatchRetrieve, request, timeout)
        return [_retrieval(r) for r in response.responses]

    def wait_until_serving(self, *, timeout: float) -> bool:
        """Waits until the service's health check reports SERVING.

        Args:
          timeout: seconds to wait at most.

        Returns:
          True once SERVING; False if it was not by then.
        """
        return wait_until_serving(self._channel, timeout)
