"""End to end on the real MovieLens 100K: train with the default settings,
publish, serve both tiers, Retrieve for a user."""

import grpc
import numpy as np
import pytest

from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from tests.conftest import shared_ml100k

pytestmark = pytest.mark.skipif(
    shared_ml100k() is None,
    reason="MovieLens 100K not found: set MOVIELENS_DATA_DIR or place it at "
    "../shared/data/ml-100k",
)


@pytest.fixture(scope="module")
def ml100k_stack(tmp_path_factory):
    from candidate_service.client import wait_until_serving
    from candidate_service.server import Settings
    from candidate_service.server import create_server as create_candidate
    from query_service.server import create_server as create_query
    from trainer import movielens
    from trainer.train import train_and_publish

    models = tmp_path_factory.mktemp("ml100k-models")
    published = train_and_publish(movielens.load(shared_ml100k()), models)
    query = create_query("127.0.0.1:0", models)
    candidate = create_candidate(
        Settings(
            address="127.0.0.1:0",
            models_dir=models,
            query_server=f"127.0.0.1:{query.port}",
        )
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{candidate.port}")
    assert wait_until_serving(channel, 60)
    yield published, pb_grpc.RetrievalServiceStub(channel)
    channel.close()
    candidate.stop(0)
    query.stop(0)


def test_retrieve_gives_ten_distinct_titled_movies(ml100k_stack):
    published, stub = ml100k_stack

    response = stub.Retrieve(pb.RetrieveRequest(user_id="42", k=10), timeout=5)

    assert response.model_version == published.version
    assert len({m.movie_id for m in response.movies}) == 10
    assert all(m.title and "\ufffd" not in m.title for m in response.movies)


def test_k_up_to_the_documented_maximum_is_served(ml100k_stack):
    _, stub = ml100k_stack

    response = stub.Retrieve(
        pb.RetrieveRequest(user_id="1", k=1000), timeout=5
    )

    assert len({m.movie_id for m in response.movies}) == 1000
    with pytest.raises(grpc.RpcError) as raised:
        stub.Retrieve(pb.RetrieveRequest(user_id="1", k=1001), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "between 1 and 1000" in raised.value.details()


def test_the_manifest_holds_test_metrics_better_than_chance(ml100k_stack):
    published, _ = ml100k_stack
    metrics = published.manifest["metrics"]

    # Chance is k / 1682: 0.6 % at 10 and 5.9 % at 100.
    assert metrics["top_100"] > 0.15
    assert metrics["top_1"] <= metrics["top_5"] <= metrics["top_10"]
    assert metrics["top_10"] <= metrics["top_50"] <= metrics["top_100"]
    assert published.manifest["num_candidates"] == 1682
    assert published.manifest["num_users"] == 943


def test_the_published_index_is_exact_on_the_movielens_catalogue(
    ml100k_stack,
):
    from candidate_service.index import CandidateIndex
    from trainer import export

    published, _ = ml100k_stack
    paths = published.paths
    movie_ids = [str(m) for m in range(1, 1683)]
    catalogue = export.load_signature(paths.candidate)(
        movie_id=np.array([m.encode() for m in movie_ids])
    )["embedding"].numpy()
    users = [str(u) for u in range(1, 944, 47)]
    queries = export.load_signature(paths.query)(
        user_id=np.array([u.encode() for u in users])
    )["embedding"].numpy()

    index = CandidateIndex.load(paths.index)
    found, scores = index.search(queries, 10)

    exact = np.argsort(-(queries @ catalogue.T), axis=1, kind="stable")[:, :10]
    expected_ids = np.array(movie_ids, dtype=np.int64)[exact]
    np.testing.assert_array_equal(found, expected_ids)
    rows = np.searchsorted(np.arange(1, 1683), found)
    np.testing.assert_allclose(
        scores, np.einsum("qd,qkd->qk", queries, catalogue[rows]), atol=1e-4
    )
