"""The typed client: answers equal the service's own protos, every failure
becomes the exception named after its status code."""

import subprocess
import sys
import threading

import grpc
import pytest

from candidate_service import api_client
from candidate_service.api_client import (
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    RetrievalClient,
    RetrievalError,
    RetrieveQuery,
    ServiceUnavailable,
    UserNotFound,
)
from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc

K = 5


@pytest.fixture(scope="module")
def address(candidate_server) -> str:
    return f"127.0.0.1:{candidate_server.port}"


@pytest.fixture(scope="module")
def client(address):
    with RetrievalClient(address) as client:
        yield client


@pytest.fixture(scope="module")
def unreachable() -> str:
    from tests.conftest import free_port

    return f"127.0.0.1:{free_port()}"


def test_retrieve_returns_the_services_answer_as_dataclasses(client, address):
    with grpc.insecure_channel(address) as channel:
        expected = pb_grpc.RetrievalServiceStub(channel).Retrieve(
            pb.RetrieveRequest(user_id="1", k=K, exclude_seen=True),
            timeout=10,
        )

    result = client.retrieve("1", K, exclude_seen=True, timeout=10)

    assert result.model_version == expected.model_version
    assert result.cold_start == expected.cold_start
    assert [(m.movie_id, m.title, m.score) for m in result.movies] == [
        (m.movie_id, m.title, m.score) for m in expected.movies
    ]


def test_batch_retrieve_answers_each_query_as_retrieve_would(client):
    queries = [
        RetrieveQuery("1", K),
        RetrieveQuery("2", 3, exclude_seen=True),
        RetrieveQuery("unknown-user", 2),
    ]

    results = client.batch_retrieve(queries, timeout=10)

    assert results == [
        client.retrieve(q.user_id, q.k, exclude_seen=q.exclude_seen, timeout=10)
        for q in queries
    ]
    assert results[2].cold_start


def test_invalid_k_raises_invalid_request_naming_the_field(client):
    with pytest.raises(InvalidRequest) as raised:
        client.retrieve("1", 0, timeout=10)

    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "k must be between 1 and" in raised.value.message
    assert not raised.value.retryable


def test_invalid_batch_member_is_named_by_index(client):
    with pytest.raises(InvalidRequest, match=r"requests\[1\]\.user_id"):
        client.batch_retrieve(
            [RetrieveQuery("1", K), RetrieveQuery("", K)], timeout=10
        )


def test_strict_unknown_user_raises_user_not_found(client):
    with pytest.raises(UserNotFound) as raised:
        client.retrieve("unknown-user", K, strict=True, timeout=10)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_unreachable_service_raises_retryable_unavailable(unreachable):
    with (
        RetrievalClient(unreachable) as client,
        pytest.raises(ServiceUnavailable) as raised,
    ):
        client.retrieve("1", K, timeout=2)
    assert raised.value.retryable


class _Stalled(pb_grpc.RetrievalServiceServicer):
    """Answers nothing until released, so every deadline runs out."""

    def __init__(self):
        self.release = threading.Event()

    def Retrieve(self, request, context):
        self.release.wait(30)
        return pb.RetrieveResponse()


@pytest.fixture(scope="module")
def stalled_address():
    from serving_common.server import start_server

    servicer = _Stalled()
    bound = start_server(
        "127.0.0.1:0",
        lambda server: pb_grpc.add_RetrievalServiceServicer_to_server(
            servicer, server
        ),
        [],
    )
    yield f"127.0.0.1:{bound.port}"
    servicer.release.set()
    bound.stop(0)


def test_timeout_raises_deadline_exceeded(stalled_address):
    with (
        RetrievalClient(stalled_address) as client,
        pytest.raises(DeadlineExceeded) as raised,
    ):
        client.retrieve("1", K, timeout=0.2)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_default_timeout_applies_without_timeout_argument(stalled_address):
    with (
        RetrievalClient(stalled_address, default_timeout_s=0.2) as client,
        pytest.raises(DeadlineExceeded),
    ):
        client.retrieve("1", K)


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_default_timeout_must_be_positive(timeout):
    with pytest.raises(ValueError, match="default_timeout_s"):
        RetrievalClient("127.0.0.1:1", default_timeout_s=timeout)


def test_timeout_is_keyword_only(client):
    with pytest.raises(TypeError):
        client.retrieve("1", K, False, False, 5.0)


@pytest.mark.parametrize(
    ("code", "error", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest, False),
        (grpc.StatusCode.NOT_FOUND, UserNotFound, False),
        (grpc.StatusCode.UNAVAILABLE, ServiceUnavailable, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, False),
        (grpc.StatusCode.INTERNAL, RetrievalError, False),
        (grpc.StatusCode.UNKNOWN, RetrievalError, False),
    ],
)
def test_each_status_code_maps_to_its_exception(code, error, retryable):
    raised = api_client.error_for(code, "what went wrong")

    assert type(raised) is error
    assert raised.code == code
    assert raised.message == "what went wrong"
    assert raised.retryable is retryable
    assert str(raised) == f"{code.name}: what went wrong"


def test_wait_until_serving(client, unreachable):
    assert client.wait_until_serving(timeout=10)
    with RetrievalClient(unreachable) as absent:
        assert not absent.wait_until_serving(timeout=0.5)


def test_importing_the_client_does_not_import_tensorflow():
    code = (
        "import sys, candidate_service.api_client; "
        "sys.exit('tensorflow' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
