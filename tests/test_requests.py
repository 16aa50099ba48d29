"""The requests users expect: exclude_seen, cold start, strict mode and
batches."""

import grpc
import pytest

from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from tests.conftest import SMALL_MOVIES


@pytest.fixture
def stub(candidate_server):
    with grpc.insecure_channel(f"127.0.0.1:{candidate_server.port}") as ch:
        yield pb_grpc.RetrievalServiceStub(ch)


def _rated(small_data, user_id: str) -> set[int]:
    rated = set()
    for line in (small_data / "u.data").read_text().splitlines():
        user, movie, _, _ = line.split("\t")
        if user == user_id:
            rated.add(int(movie))
    return rated


def test_exclude_seen_never_returns_a_rated_movie_and_still_fills_k(
    stub, small_data
):
    rated = _rated(small_data, "5")
    plain = stub.Retrieve(pb.RetrieveRequest(user_id="5", k=10), timeout=5)
    assert {m.movie_id for m in plain.movies} & rated  # taste is learned

    response = stub.Retrieve(
        pb.RetrieveRequest(user_id="5", k=10, exclude_seen=True), timeout=5
    )

    ids = [m.movie_id for m in response.movies]
    assert len(ids) == len(set(ids)) == 10
    assert not set(ids) & rated
    assert not response.cold_start


def test_exclude_seen_returns_fewer_when_the_user_has_seen_nearly_all(
    stub, small_data
):
    rated = _rated(small_data, "5")

    response = stub.Retrieve(
        pb.RetrieveRequest(user_id="5", k=SMALL_MOVIES, exclude_seen=True),
        timeout=5,
    )

    assert len(response.movies) == SMALL_MOVIES - len(rated)
    assert {m.movie_id for m in response.movies} == (
        set(range(1, SMALL_MOVIES + 1)) - rated
    )


def test_an_unknown_user_gets_the_most_popular_movies_flagged_cold_start(
    stub, small_data
):
    counts: dict[int, int] = {}
    for line in (small_data / "u.data").read_text().splitlines():
        movie = int(line.split("\t")[1])
        counts[movie] = counts.get(movie, 0) + 1

    response = stub.Retrieve(
        pb.RetrieveRequest(user_id="no-such-user", k=5), timeout=5
    )

    assert response.cold_start
    got = [m.movie_id for m in response.movies]
    assert [counts[m] for m in got] == sorted(counts.values(), reverse=True)[:5]


def test_strict_mode_turns_an_unknown_user_into_not_found(stub):
    with pytest.raises(grpc.RpcError) as raised:
        stub.Retrieve(
            pb.RetrieveRequest(user_id="no-such-user", k=5, strict=True),
            timeout=5,
        )

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-user" in raised.value.details()


def test_a_known_user_is_never_cold_start(stub):
    response = stub.Retrieve(
        pb.RetrieveRequest(user_id="1", k=5, strict=True), timeout=5
    )
    assert not response.cold_start


def test_batch_retrieve_answers_each_user_as_retrieve_would(stub):
    requests = [
        pb.RetrieveRequest(user_id="1", k=5),
        pb.RetrieveRequest(user_id="2", k=7, exclude_seen=True),
        pb.RetrieveRequest(user_id="stranger", k=3),
    ]

    batch = stub.BatchRetrieve(
        pb.BatchRetrieveRequest(requests=requests), timeout=5
    )

    assert len(batch.responses) == 3
    for request, response in zip(requests, batch.responses):
        single = stub.Retrieve(request, timeout=5)
        assert [m.movie_id for m in response.movies] == [
            m.movie_id for m in single.movies
        ]
        assert [m.score for m in response.movies] == pytest.approx(
            [m.score for m in single.movies], abs=1e-5
        )
        assert response.cold_start == single.cold_start
        assert response.model_version == single.model_version
    assert [len(r.movies) for r in batch.responses] == [5, 7, 3]


@pytest.mark.parametrize(
    "requests, expected_text",
    [
        ([], "between 1 and 256 requests, got 0"),
        (
            [pb.RetrieveRequest(user_id="1", k=5)] * 257,
            "between 1 and 256 requests, got 257",
        ),
        (
            [
                pb.RetrieveRequest(user_id="1", k=5),
                pb.RetrieveRequest(user_id="2", k=0),
            ],
            "requests[1].k must be between 1 and",
        ),
        (
            [pb.RetrieveRequest(user_id="", k=5)],
            "requests[0].user_id is required",
        ),
    ],
)
def test_bad_batches_get_invalid_argument_naming_the_field(
    stub, requests, expected_text
):
    with pytest.raises(grpc.RpcError) as raised:
        stub.BatchRetrieve(
            pb.BatchRetrieveRequest(requests=requests), timeout=5
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected_text in raised.value.details()


def test_strict_batch_with_an_unknown_user_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as raised:
        stub.BatchRetrieve(
            pb.BatchRetrieveRequest(
                requests=[
                    pb.RetrieveRequest(user_id="1", k=5),
                    pb.RetrieveRequest(user_id="ghost", k=5, strict=True),
                ]
            ),
            timeout=5,
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
