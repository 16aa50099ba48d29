"""End to end on small MovieLens-format data: train, publish, serve both
tiers on free ports, Retrieve over gRPC."""

import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from tests.conftest import SMALL_MOVIES, free_port, small_title


@pytest.fixture
def stub(candidate_server):
    with grpc.insecure_channel(f"127.0.0.1:{candidate_server.port}") as ch:
        yield pb_grpc.RetrievalServiceStub(ch)


def test_retrieve_returns_k_distinct_movies_of_the_published_version(
    stub, small_published
):
    _, published = small_published

    response = stub.Retrieve(pb.RetrieveRequest(user_id="7", k=10), timeout=5)

    ids = [m.movie_id for m in response.movies]
    assert len(ids) == 10
    assert len(set(ids)) == 10
    assert response.model_version == published.version
    scores = [m.score for m in response.movies]
    assert scores == sorted(scores, reverse=True)
    for movie in response.movies:
        assert movie.title == small_title(movie.movie_id)


def test_scores_are_the_dot_product_of_the_served_towers(
    stub, small_published
):
    from trainer import export

    models, published = small_published
    query = export.load_signature(published.paths.query)
    candidate = export.load_signature(published.paths.candidate)

    response = stub.Retrieve(
        pb.RetrieveRequest(user_id="3", k=SMALL_MOVIES), timeout=5
    )

    user = query(user_id=np.array([b"3"]))["embedding"].numpy()[0]
    ids = np.array([str(m.movie_id).encode() for m in response.movies])
    movies = candidate(movie_id=ids)["embedding"].numpy()
    np.testing.assert_allclose(
        [m.score for m in response.movies], movies @ user, atol=1e-4
    )
    assert len(response.movies) == SMALL_MOVIES


def test_the_model_learned_the_users_taste(stub):
    # Users in the small data only rate movies with id % 3 == user % 3.
    response = stub.Retrieve(pb.RetrieveRequest(user_id="5", k=10), timeout=5)
    in_taste = [m.movie_id % 3 == 5 % 3 for m in response.movies]
    assert sum(in_taste) >= 8


@pytest.mark.parametrize(
    "request_fields, expected_text",
    [
        (dict(user_id="", k=10), "user_id is required"),
        (dict(user_id="x" * 129, k=10), "at most 128 bytes"),
        (dict(user_id="1", k=0), "k must be between 1 and"),
        (dict(user_id="1", k=-3), "got -3"),
        (
            dict(user_id="1", k=SMALL_MOVIES + 1),
            f"k must be between 1 and {SMALL_MOVIES}",
        ),
    ],
)
def test_invalid_requests_get_invalid_argument_naming_the_limit(
    stub, request_fields, expected_text
):
    with pytest.raises(grpc.RpcError) as raised:
        stub.Retrieve(pb.RetrieveRequest(**request_fields), timeout=5)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected_text in raised.value.details()


def test_health_reports_serving_once_warm(candidate_server):
    with grpc.insecure_channel(f"127.0.0.1:{candidate_server.port}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _unwarmed_candidate_server(models, query_address):
    from candidate_service.server import Settings, create_server

    return create_server(
        Settings(
            address="127.0.0.1:0",
            models_dir=models,
            query_server=query_address,
            query_timeout_s=0.5,
            poll_s=0.2,
        )
    )


def test_not_serving_and_unavailable_while_the_query_server_is_down(
    small_published,
):
    models, _ = small_published
    address = f"127.0.0.1:{free_port()}"  # nothing listens here
    server = _unwarmed_candidate_server(models, address)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # The first attempt to bring the version up must have failed
            # against the query server before the reason can name it.
            time.sleep(1.0)
            with pytest.raises(grpc.RpcError) as raised:
                pb_grpc.RetrievalServiceStub(ch).Retrieve(
                    pb.RetrieveRequest(user_id="1", k=5), timeout=5
                )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert address in raised.value.details()
    finally:
        server.stop(0)


def test_query_server_going_away_gives_unavailable_naming_its_address(
    small_published,
):
    from query_service.server import create_server as create_query_server

    models, _ = small_published
    query = create_query_server("127.0.0.1:0", models, poll_s=0.2)
    address = f"127.0.0.1:{query.port}"
    server = _unwarmed_candidate_server(models, address)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            from candidate_service.client import wait_until_serving

            assert wait_until_serving(ch, 30)
            query.stop(0)
            stub = pb_grpc.RetrievalServiceStub(ch)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Retrieve(pb.RetrieveRequest(user_id="1", k=5), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert address in raised.value.details()
    finally:
        server.stop(0)
        query.stop(0)


def _hanging_query_server():
    """A server on the query server's API that never answers Predict."""
    import threading

    from serving_common.server import start_server

    release = threading.Event()

    def hang(request, context):
        release.wait(10)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {
            "Predict": grpc.unary_unary_rpc_method_handler(
                hang, request_deserializer=bytes, response_serializer=bytes
            )
        },
    )
    server = start_server(
        "127.0.0.1:0",
        lambda s: s.add_generic_rpc_handlers((handler,)),
        ["tensorflow.serving.PredictionService"],
    )
    return server, release


@pytest.mark.parametrize("caller_timeout_s", [None, 0.4])
def test_a_query_server_that_never_answers_gives_deadline_exceeded(
    small_published, caller_timeout_s
):
    import time

    from candidate_service.versions import load_version

    models, published = small_published
    hanging, release = _hanging_query_server()
    server = _unwarmed_candidate_server(models, f"127.0.0.1:{hanging.port}")
    # The warm-up cannot pass against this server; install the version by
    # hand to exercise the request path.
    server.retriever.swap(load_version(models, published.version))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.RetrievalServiceStub(ch)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                stub.Retrieve(
                    pb.RetrieveRequest(user_id="1", k=5),
                    timeout=caller_timeout_s,
                )
            elapsed = time.monotonic() - started
    finally:
        release.set()
        server.stop(0)
        hanging.stop(0)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Bounded by the service's own 0.5 s query deadline, or the caller's.
    assert elapsed < 3
