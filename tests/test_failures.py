"""Overload, shutdown and arbitrary input: the service answers with the
right status and stays healthy."""

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from tests.conftest import REPO, free_port

_RETRIEVE = "/movie_retrieval.v1.RetrievalService/Retrieve"
_BATCH = "/movie_retrieval.v1.RetrievalService/BatchRetrieve"


def _slow_query_server(models, delay_s):
    """The built-in query server, but every Predict takes `delay_s` more."""
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    from query_service.models import ModelRegistry
    from query_service.server import SERVICE_NAMES
    from query_service.servicer import (
        ModelServiceServicer,
        PredictionServiceServicer,
    )
    from serving_common.server import start_server

    class Slow(PredictionServiceServicer):
        def Predict(self, request, context):
            time.sleep(delay_s)
            return super().Predict(request, context)

    registry = ModelRegistry(models)
    registry.refresh()

    def register(server):
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            Slow(registry), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServiceServicer(registry), server
        )

    return start_server("127.0.0.1:0", register, SERVICE_NAMES)


def _serving(channel) -> bool:
    from candidate_service.client import wait_until_serving

    return wait_until_serving(channel, 60)


def test_beyond_the_in_flight_limit_requests_are_refused_at_once(
    small_published,
):
    from candidate_service.server import Settings, create_server

    models, _ = small_published
    slow = _slow_query_server(models, delay_s=1.0)
    server = create_server(
        Settings(
            address="127.0.0.1:0",
            models_dir=models,
            query_server=f"127.0.0.1:{slow.port}",
            query_timeout_s=5.0,
            poll_s=30.0,
            max_in_flight=2,
        )
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            assert _serving(ch)
            stub = pb_grpc.RetrievalServiceStub(ch)
            busy = [
                stub.Retrieve.future(
                    pb.RetrieveRequest(user_id="1", k=3), timeout=10
                )
                for _ in range(2)
            ]
            time.sleep(0.3)  # both are now waiting on the slow server
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                stub.Retrieve(pb.RetrieveRequest(user_id="2", k=3), timeout=10)
            refused_after = time.monotonic() - started
            results = [f.result() for f in busy]
    finally:
        server.stop(0)
        slow.stop(0)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Refused rather than queued behind the 1 s calls in flight.
    assert refused_after < 0.5
    assert all(len(r.movies) == 3 for r in results)


def test_sigterm_drains_in_flight_requests_and_exits_zero(small_published):
    models, _ = small_published
    slow = _slow_query_server(models, delay_s=1.0)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "candidate_service",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--models-dir",
            str(models),
            "--query-server",
            f"127.0.0.1:{slow.port}",
            "--query-timeout",
            "5",
            "--grace-seconds",
            "5",
        ],
        cwd=REPO,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert _serving(ch)
            statuses = []
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=20
            )

            def follow():
                try:
                    for update in watch:
                        statuses.append(update.status)
                except grpc.RpcError:
                    pass

            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            in_flight = pb_grpc.RetrievalServiceStub(ch).Retrieve.future(
                pb.RetrieveRequest(user_id="1", k=4), timeout=10
            )
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            response = in_flight.result()
            exit_code = process.wait(timeout=20)
            follower.join(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
        slow.stop(0)
    log = process.stdout.read()

    assert len(response.movies) == 4
    assert exit_code == 0, log
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    assert "SIGTERM received" in log


@pytest.fixture(scope="module")
def raw_channel(candidate_server):
    with grpc.insecure_channel(f"127.0.0.1:{candidate_server.port}") as ch:
        yield ch


_ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
}


def _call_code(channel, method, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(method)
    try:
        call(payload, timeout=5)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


_requests = st.builds(
    pb.RetrieveRequest,
    user_id=st.text(max_size=200),
    k=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    exclude_seen=st.booleans(),
    strict=st.booleans(),
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(request=_requests)
def test_arbitrary_requests_never_get_unknown_or_internal(
    raw_channel, request
):
    code = _call_code(raw_channel, _RETRIEVE, request.SerializeToString())
    assert code in _ACCEPTABLE


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(requests=st.lists(_requests, max_size=300))
def test_arbitrary_batches_never_get_unknown_or_internal(
    raw_channel, requests
):
    payload = pb.BatchRetrieveRequest(requests=requests).SerializeToString()
    assert _call_code(raw_channel, _BATCH, payload) in _ACCEPTABLE


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payload=st.binary(max_size=512))
def test_malformed_bytes_on_the_wire_never_get_unknown_or_internal(
    raw_channel, payload
):
    for method in (_RETRIEVE, _BATCH):
        assert _call_code(raw_channel, method, payload) in _ACCEPTABLE


def test_invalid_utf8_in_a_string_field_is_invalid_argument(raw_channel):
    # Field 1 (user_id), wire type 2, length 2, bytes that are not UTF-8.
    payload = bytes([0x0A, 0x02, 0xC3, 0x28, 0x10, 0x05])

    code = _call_code(raw_channel, _RETRIEVE, payload)

    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_server_stays_healthy_after_the_fuzzing(raw_channel):
    reply = health_pb2_grpc.HealthStub(raw_channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
