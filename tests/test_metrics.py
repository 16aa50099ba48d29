"""The metrics endpoint: request counts and latencies by method and status
code after real calls, outbound query-server latency, and the gauges of the
version served."""

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from candidate_service.api_client import (
    InvalidRequest,
    RetrievalClient,
    RetrieveQuery,
)
from serving_common import metrics
from serving_common.server import start_server

RETRIEVAL = "movie_retrieval.v1.RetrievalService"
K = 3


@pytest.fixture(scope="module")
def endpoint():
    server = metrics.serve_metrics("127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.port}/metrics"
    server.stop()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample on the endpoint, by name and sorted labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def rpc(
    name: str, service: str, method: str, code: str, **labels: str
) -> tuple:
    """The key of one sample of a per-RPC metric."""
    labels |= {
        "grpc_service": service,
        "grpc_method": method,
        "grpc_code": code,
    }
    return name, tuple(sorted(labels.items()))


def increase(before: dict, after: dict, key: tuple) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_requests_are_counted_and_timed_by_method_and_code(
    endpoint, candidate_server
):
    before = scrape(endpoint)
    with RetrievalClient(f"127.0.0.1:{candidate_server.port}") as client:
        for user in ["1", "2", "3"]:
            client.retrieve(user, K, timeout=10)
        for _ in range(2):
            with pytest.raises(InvalidRequest):
                client.retrieve("1", 0, timeout=10)
        client.batch_retrieve([RetrieveQuery("1", K)], timeout=10)
    after = scrape(endpoint)

    expected = {
        ("Retrieve", "OK"): 3,
        ("Retrieve", "INVALID_ARGUMENT"): 2,
        ("BatchRetrieve", "OK"): 1,
    }
    for (method, code), count in expected.items():
        for name in [
            "grpc_server_handled_total",
            "grpc_server_handling_seconds_count",
        ]:
            key = rpc(name, RETRIEVAL, method, code)
            assert increase(before, after, key) == count, key
    # Each call lands in the +Inf bucket, and took some time.
    inf_bucket = rpc(
        "grpc_server_handling_seconds_bucket",
        RETRIEVAL,
        "Retrieve",
        "OK",
        le="+Inf",
    )
    assert increase(before, after, inf_bucket) == 3
    seconds = rpc(
        "grpc_server_handling_seconds_sum", RETRIEVAL, "Retrieve", "OK"
    )
    assert increase(before, after, seconds) > 0


def test_unexpected_error_is_counted_as_internal(endpoint):
    def explode(request, context):
        raise RuntimeError("a bug")

    def register(server):
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.Metrics",
                    {"Explode": grpc.unary_unary_rpc_method_handler(explode)},
                )
            ]
        )

    bound = start_server("127.0.0.1:0", register, [])
    before = scrape(endpoint)
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{bound.port}") as channel,
            pytest.raises(grpc.RpcError) as raised,
        ):
            channel.unary_unary("/test.Metrics/Explode")(b"", timeout=5)
    finally:
        bound.stop(0)
    after = scrape(endpoint)

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    key = rpc(
        "grpc_server_handled_total", "test.Metrics", "Explode", "INTERNAL"
    )
    assert increase(before, after, key) == 1


def test_outbound_calls_are_timed_by_method_and_code(endpoint, query_server):
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
    )

    from model_store import contract

    channel = metrics.instrument_channel(
        grpc.insecure_channel(f"127.0.0.1:{query_server.port}")
    )
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    known = get_model_status_pb2.GetModelStatusRequest()
    known.model_spec.name = contract.QUERY_MODEL_NAME
    unknown = get_model_status_pb2.GetModelStatusRequest()
    unknown.model_spec.name = "no-such-model"

    before = scrape(endpoint)
    try:
        stub.GetModelStatus(known, timeout=5)
        stub.GetModelStatus(known, timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.GetModelStatus(unknown, timeout=5)
    finally:
        channel.close()
    after = scrape(endpoint)

    service = "tensorflow.serving.ModelService"
    def counted(code):
        key = rpc(
            "grpc_client_handling_seconds_count",
            service,
            "GetModelStatus",
            code,
        )
        return increase(before, after, key)

    # Candidate services started by other tests in this process check the
    # query server with GetModelStatus through the same process-wide
    # metrics, so successes may count more than this test's own two; none
    # of theirs is NOT_FOUND.
    assert counted("OK") >= 2
    assert counted("NOT_FOUND") == 1


def test_serving_version_gauges(endpoint):
    metrics.set_serving_version(7, 1682, 32)

    samples = scrape(endpoint)

    assert samples[("movie_retrieval_model_version", ())] == 7
    assert samples[("movie_retrieval_index_vectors", ())] == 1682
    assert samples[("movie_retrieval_index_dimension", ())] == 32


def test_metrics_port_in_use_is_an_os_error(endpoint):
    port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError):
        metrics.serve_metrics("127.0.0.1", port)
