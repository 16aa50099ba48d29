"""The load-test tool against trivial in-process servers on free ports:
what it sends, how it counts, and the bounds it refuses."""

import asyncio
import concurrent.futures
import json
import threading
import time

import grpc
import prometheus_client
import pytest

from bench import chain_floor, loadtest
from tests.conftest import free_port


class _EchoBehaviour:
    """What the test server does, and how many requests it received."""

    def __init__(self):
        self.received = 0
        self.fail_code = grpc.StatusCode.RESOURCE_EXHAUSTED
        self.sleep_s = 0.0
        self._lock = threading.Lock()

    def echo(self, request: bytes, context) -> bytes:
        with self._lock:
            self.received += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if request.startswith(b"fail"):
            context.abort(self.fail_code, "asked to fail")
        return request


@pytest.fixture
def echo_server():
    """An Echo server on 127.0.0.1:0 that fails requests for users whose id
    starts with "fail", with `fail_code`."""
    behaviour = _EchoBehaviour()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                chain_floor.SERVICE_NAME,
                {
                    chain_floor.ECHO: grpc.unary_unary_rpc_method_handler(
                        behaviour.echo
                    )
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", behaviour
    server.stop(0)


def _run(target: str, users: list[str], **spec) -> loadtest.LoadResult:
    spec.setdefault("rpc", "echo")
    spec.setdefault("warmup_s", 0.0)
    # Long enough never to end a test: max_requests ends these runs.
    spec.setdefault("duration_s", 120.0)
    load = loadtest.LoadSpec(target=target, **spec)
    return asyncio.run(loadtest.run_load(load, users))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_closed_loop_sends_exactly_max_requests_and_measures_them_all(
    echo_server, concurrency
):
    target, server = echo_server

    result = _run(target, ["a", "b"], concurrency=concurrency, max_requests=50)

    assert server.received == 50
    assert (result.requests, result.ok, result.errors) == (50, 50, {})
    assert result.hit_max_requests
    assert result.warmup_requests == 0
    assert result.qps > 0
    assert result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAVAILABLE,
    ],
)
def test_errors_are_counted_by_status_code_name(echo_server, code):
    target, server = echo_server
    server.fail_code = code
    # Users are taken in turn, so one request in four fails.
    users = ["u1", "u2", "fail", "u3"]

    result = _run(target, users, concurrency=4, max_requests=40)

    assert result.requests == 40
    assert result.ok == 30
    assert result.errors == {code.name: 10}


def test_a_run_capped_during_warmup_measures_nothing(echo_server):
    target, server = echo_server

    result = _run(target, ["a"], concurrency=2, warmup_s=120.0, max_requests=20)

    assert server.received == 20
    assert result.warmup_requests == 20
    assert (result.requests, result.qps, result.p50_ms) == (0, 0.0, None)
    assert result.hit_max_requests


@pytest.mark.parametrize(
    "rate, duration_s, max_requests, expected",
    [
        (4.0, 1.0, 100, [0.0, 0.25, 0.5, 0.75]),
        (3.0, 1.0, 100, [0.0, 1 / 3, 2 / 3]),
        (4.0, 1.0, 2, [0.0, 0.25]),
        (2.0, 0.1, 100, [0.0]),
    ],
)
def test_open_loop_due_times_are_a_fixed_schedule(
    rate, duration_s, max_requests, expected
):
    due = loadtest.open_loop_due_times(rate, duration_s, max_requests)

    assert due == pytest.approx(expected)


def test_open_loop_sends_every_scheduled_request(echo_server):
    target, server = echo_server

    result = _run(target, ["a"], rate=100.0, duration_s=0.5)

    # 0.5 s at 100/s: due at 0, 10 ms, ..., 490 ms.
    assert server.received == 50
    assert result.requests == 50
    assert result.mode == "open"
    assert not result.hit_max_requests
    assert result.send_lag_max_ms is not None


def test_open_loop_latency_counts_from_the_due_time(echo_server):
    target, server = echo_server
    server.sleep_s = 0.02

    # 50 requests are due within 0.25 s, but one at a time at >= 20 ms each
    # the last cannot start before 49 * 20 ms = 0.98 s: it is >= 0.73 s late
    # against its due time of 0.245 s. A slower machine only adds to that;
    # timing from the send instead would report about 20 ms.
    result = _run(
        target,
        ["a"],
        rate=200.0,
        duration_s=0.25,
        max_in_flight=1,
        deadline_s=30.0,
    )

    assert result.requests == 50
    assert result.max_ms >= 730
    assert result.send_lag_max_ms >= 700


def test_the_chain_floor_forwards_each_request_once(echo_server):
    target, server = echo_server
    front = chain_floor.create_front("127.0.0.1:0", backend=target)
    try:
        result = _run(
            f"127.0.0.1:{front.port}", ["a"], concurrency=2, max_requests=25
        )
    finally:
        front.stop(0)

    assert (result.ok, server.received) == (25, 25)


@pytest.mark.parametrize("interceptors", [True, False])
def test_the_bare_chain_floor_runs_without_the_interceptors(
    echo_server, interceptors
):
    # The bare floor prices the interceptors; were they still there, its
    # figures would be the plain floor's.
    target, _ = echo_server
    front = chain_floor.create_front(
        "127.0.0.1:0", backend=target, interceptors=interceptors
    )
    labels = {
        "grpc_service": chain_floor.SERVICE_NAME,
        "grpc_method": chain_floor.ECHO,
        "grpc_code": "OK",
    }

    def handled():
        return prometheus_client.REGISTRY.get_sample_value(
            "grpc_server_handled_total", labels
        ) or 0.0

    before = handled()
    try:
        result = _run(
            f"127.0.0.1:{front.port}", ["a"], concurrency=1, max_requests=5
        )
    finally:
        front.stop(0)

    assert result.ok == 5
    assert handled() - before == (5 if interceptors else 0)


def test_an_unreachable_target_raises_connection_error(monkeypatch):
    monkeypatch.setattr(loadtest, "CONNECT_TIMEOUT_S", 0.5)

    with pytest.raises(ConnectionError, match="could not connect"):
        _run(f"127.0.0.1:{free_port()}", ["a"], concurrency=1)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"concurrency": 0}, "concurrency must be in"),
        ({"concurrency": 5000}, "concurrency must be in"),
        ({"rate": 0.0}, "rate must be in"),
        ({"rate": 1e6}, "rate must be in"),
        ({"concurrency": 1, "rate": 10.0}, "exactly one of"),
        ({}, "exactly one of"),
        ({"concurrency": 1, "duration_s": 0.0}, "duration_s must be in"),
        ({"concurrency": 1, "duration_s": 1e5}, "duration_s must be in"),
        ({"concurrency": 1, "warmup_s": -1.0}, "warmup_s must be in"),
        ({"concurrency": 1, "max_requests": 0}, "max_requests must be in"),
        ({"concurrency": 1, "max_requests": 10**9}, "max_requests must be in"),
        ({"concurrency": 1, "deadline_s": 0.0}, "deadline_s must be in"),
        ({"rate": 1.0, "max_in_flight": 0}, "max_in_flight must be in"),
        ({"concurrency": 1, "k": 0}, "k must be at least 1"),
        ({"concurrency": 1, "rpc": "nope"}, "rpc must be one of"),
    ],
)
def test_absurd_load_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        loadtest.LoadSpec(target="127.0.0.1:50051", **fields)


@pytest.mark.parametrize(
    "target, message",
    [
        ("dns:///127.0.0.1:50051", "must be host:port"),
        ("unix:/tmp/socket", "must be host:port"),
        ("127.0.0.1", "must be host:port"),
        ("127.0.0.1:0", "must be host:port"),
        ("127.0.0.1:70000", "must be host:port"),
        ("127.0.0.1:http", "must be host:port"),
        ("10.0.0.1:50051", "not a loopback address"),
        ("example.com:443", "not a loopback address"),
    ],
)
def test_targets_other_than_one_loopback_address_are_refused(target, message):
    with pytest.raises(ValueError, match=message):
        loadtest.check_target(target)


@pytest.mark.parametrize(
    "target, allow_remote",
    [
        ("127.0.0.1:50051", False),
        ("localhost:8500", False),
        ("[::1]:50051", False),
        ("127.0.0.2:1", False),
        ("10.0.0.1:50051", True),
    ],
)
def test_loopback_targets_and_allowed_remote_ones_pass(target, allow_remote):
    assert loadtest.check_target(target, allow_remote) == target


@pytest.mark.parametrize(
    "p, expected",
    [(0, 1), (10, 1), (11, 2), (50, 5), (95, 10), (99, 10), (100, 10)],
)
def test_percentile_is_nearest_rank(p, expected):
    # Of 1..10, the p-th percentile is the smallest value with at least p%
    # of the values at or below it: ceil(p / 10).
    assert loadtest.percentile(list(range(1, 11)), p) == expected


def test_percentile_of_nothing_is_none():
    assert loadtest.percentile([], 50) is None


def test_retrieve_requests_carry_the_user_and_k():
    from movie_retrieval.v1 import retrieval_service_pb2 as pb

    encoded = loadtest.RPCS["retrieve"].encode("42", 7, None)

    request = pb.RetrieveRequest.FromString(encoded)
    assert (request.user_id, request.k) == ("42", 7)


@pytest.mark.parametrize("version", [None, 3])
def test_predict_requests_follow_the_query_model_contract(version):
    from tensorflow_serving.apis import predict_pb2

    from model_store import contract

    encoded = loadtest.RPCS["predict"].encode("42", 10, version)

    request = predict_pb2.PredictRequest.FromString(encoded)
    assert request.model_spec.name == contract.QUERY_MODEL_NAME
    assert request.model_spec.HasField("version") == (version is not None)
    assert request.model_spec.version.value == (version or 0)
    tensor = request.inputs[contract.USER_ID_KEY]
    assert list(tensor.string_val) == [b"42"]
    assert [d.size for d in tensor.tensor_shape.dim] == [1]
    assert list(request.output_filter) == [contract.EMBEDDING_KEY]


def test_users_file_skips_blank_lines(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("7\n\n  42 \n1\n", encoding="utf-8")

    assert loadtest.users_from_file(path) == ["7", "42", "1"]


def test_an_empty_users_file_is_refused(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("\n\n", encoding="utf-8")

    with pytest.raises(ValueError, match="holds no user ids"):
        loadtest.users_from_file(path)


def test_users_from_a_dataset_are_its_users_sampled_by_seed(small_data):
    from tests.conftest import SMALL_USERS

    first = loadtest.users_from_dataset(small_data, 30, seed=1)
    again = loadtest.users_from_dataset(small_data, 30, seed=1)
    other = loadtest.users_from_dataset(small_data, 30, seed=2)

    assert first == again
    assert first != other
    assert len(first) == 30
    # The data has more users than asked for: drawn without replacement.
    assert len(set(first)) == 30
    assert set(first) <= {str(u) for u in range(1, SMALL_USERS + 1)}


def test_cli_writes_the_result_as_json(echo_server, tmp_path, capsys):
    target, server = echo_server
    users = tmp_path / "users.txt"
    users.write_text("a\nfail\n", encoding="utf-8")
    out = tmp_path / "result.json"

    code = loadtest.main(
        [
            *("--rpc", "echo", "--target", target, "--concurrency", "2"),
            *("--duration", "120", "--warmup", "0", "--max-requests", "30"),
            *("--users-file", str(users), "--out", str(out)),
        ]
    )

    assert (code, server.received) == (0, 30)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert set(written) == {
        *("rpc", "target", "mode", "concurrency", "rate", "elapsed_s"),
        *("requests", "ok", "errors", "qps", "p50_ms", "p95_ms", "p99_ms"),
        *("max_ms", "mean_ms", "client_cpu", "client_user_s"),
        *("client_system_s", "warmup_requests", "hit_max_requests"),
        *("send_lag_p99_ms", "send_lag_max_ms"),
    }
    assert (written["requests"], written["ok"]) == (30, 15)
    assert written["errors"] == {"RESOURCE_EXHAUSTED": 15}
    assert (written["mode"], written["concurrency"]) == ("closed", 2)
    assert "RESOURCE_EXHAUSTED 15" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concurrency", "100000"], "concurrency must be in"),
        (["--duration", "1e9"], "duration_s must be in"),
        (["--max-requests", "0"], "max_requests must be in"),
        (["--target", "10.1.2.3:50051"], "not a loopback address"),
        (["--rpc", "retrieve"], "needs --users-from-dataset"),
    ],
)
def test_cli_refuses_bad_flags_before_sending_anything(argv, message, capsys):
    base = ["--rpc", "echo", "--target", "127.0.0.1:50051"]

    with pytest.raises(SystemExit) as exit_info:
        loadtest.main(base + argv)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_help_describes_both_loops(capsys):
    with pytest.raises(SystemExit) as exit_info:
        loadtest.main(["--help"])

    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--concurrency" in text and "--rate" in text
