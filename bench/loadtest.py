"""Load test for the chain's gRPC endpoints, closed or open loop.

    python -m bench.loadtest --target 127.0.0.1:50051 --concurrency 8 \\
        --users-from-dataset ../shared/data/ml-100k --out load.json
    python -m bench.loadtest --target 127.0.0.1:50051 --rate 300 ...
    python -m bench.loadtest --rpc predict --target 127.0.0.1:8500 ...

Closed loop: N callers, each sending its next request when its last one is
answered; QPS is what the server sustains at that concurrency. Open loop:
request i is due i / rate seconds after the start whatever the server does,
and its latency counts from that due time, so falling behind (the server's
or this client's) shows in the tail instead of quietly lowering the rate
(coordinated omission).

Requests are serialized once per user before the run and responses are not
parsed, so the client spends little CPU per request; its CPU use is still
reported, because a saturated client looks like a slow server.
"""

import argparse
import array
import asyncio
import collections
import dataclasses
import ipaddress
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from bench.chain_floor import ECHO_METHOD

_log = logging.getLogger("bench.loadtest")

# Bounds that keep a mistyped flag from turning into an endless or runaway
# load; ValueError names them.
MAX_DURATION_S = 3600.0
MAX_WARMUP_S = 600.0
MAX_CONCURRENCY = 1024
MAX_RATE = 20_000.0
MAX_REQUESTS = 10_000_000
MAX_DEADLINE_S = 60.0
MAX_IN_FLIGHT = 10_000
DEFAULT_MAX_REQUESTS = 1_000_000
CONNECT_TIMEOUT_S = 10.0

# Only the address given is dialled: no HTTP proxy from the environment, no
# service config from DNS, and one attempt per request.
_CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.service_config_disable_resolution", 1),
    ("grpc.enable_retries", 0),
]

_OK = grpc.StatusCode.OK.name


def _encode_retrieve(user_id: str, k: int, version: int | None) -> bytes:
    from movie_retrieval.v1 import retrieval_service_pb2 as pb

    return pb.RetrieveRequest(user_id=user_id, k=k).SerializeToString()


def _encode_predict(user_id: str, k: int, version: int | None) -> bytes:
    # Imported here: the TF Serving protos import TensorFlow.
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    from model_store import contract

    request = predict_pb2.PredictRequest()
    request.model_spec.name = contract.QUERY_MODEL_NAME
    if version is not None:
        request.model_spec.version.value = version
    request.model_spec.signature_name = contract.SERVING_SIGNATURE
    tensor = request.inputs[contract.USER_ID_KEY]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add().size = 1
    tensor.string_val.append(user_id.encode("utf-8"))
    request.output_filter.append(contract.EMBEDDING_KEY)
    return request.SerializeToString()


def _encode_echo(user_id: str, k: int, version: int | None) -> bytes:
    return user_id.encode("utf-8")


@dataclasses.dataclass(frozen=True)
class Rpc:
    """A method the tool can call.

    Attributes:
      method: the full gRPC method path.
      encode: (user_id, k, model_version) to the serialized request.
    """

    method: str
    encode: Callable[[str, int, int | None], bytes]


RPCS = {
    "retrieve": Rpc(
        "/movie_retrieval.v1.RetrievalService/Retrieve", _encode_retrieve
    ),
    "predict": Rpc(
        "/tensorflow.serving.PredictionService/Predict", _encode_predict
    ),
    "echo": Rpc(ECHO_METHOD, _encode_echo),
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_target(target: str, allow_remote: bool = False) -> str:
    """Checks that `target` is one literal host:port.

    Args:
      target: "host:port"; an IPv6 host in brackets ("[::1]:50051").
      allow_remote: accept a host that is not a loopback address.

    Returns:
      `target` unchanged.

    Raises:
      ValueError: not host:port (a scheme, a path, a port outside
        1-65535), or not loopback while `allow_remote` is False.
    """
    host, sep, port = target.rpartition(":")
    if (
        not sep
        or not host
        or "/" in target
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        raise ValueError(
            f"target must be host:port, for example 127.0.0.1:50051; got "
            f"{target!r}"
        )
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not allow_remote and not _is_loopback(bare):
        raise ValueError(
            f"target {target!r} is not a loopback address; load-testing "
            "another machine needs allow_remote (--allow-remote)"
        )
    return target


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value}")


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """What to send, where, and for how long.

    Exactly one of `concurrency` (closed loop) and `rate` (open loop).

    Attributes:
      target: host:port of the server; see `check_target`.
      rpc: a key of `RPCS`: "retrieve", "predict" or "echo".
      concurrency: callers, each with one request outstanding.
      rate: requests due per second, on a fixed schedule.
      duration_s: seconds measured after the warm-up.
      warmup_s: seconds of load sent first and not measured.
      max_requests: most requests sent in all, warm-up included; the run
        ends early when they are sent.
      deadline_s: deadline of each request, in seconds.
      k: movies per Retrieve.
      model_version: the version a Predict pins; None asks for the newest.
      max_in_flight: open loop: most requests outstanding at once; a due
        request waits for a slot, and that wait counts in its latency.
      allow_remote: allow a target that is not a loopback address.

    Raises:
      ValueError: a value outside its bound, both or neither of
        `concurrency` and `rate`, an unknown rpc, or a bad target.
    """

    target: str
    rpc: str = "retrieve"
    concurrency: int | None = None
    rate: float | None = None
    duration_s: float = 10.0
    warmup_s: float = 2.0
    max_requests: int = DEFAULT_MAX_REQUESTS
    deadline_s: float = 2.0
    k: int = 10
    model_version: int | None = None
    max_in_flight: int = 1000
    allow_remote: bool = False

    def __post_init__(self):
        check_target(self.target, self.allow_remote)
        if self.rpc not in RPCS:
            raise ValueError(
                f"rpc must be one of {sorted(RPCS)}, got {self.rpc!r}"
            )
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError(
                "give exactly one of concurrency (closed loop) and rate "
                f"(open loop); got concurrency={self.concurrency}, "
                f"rate={self.rate}"
            )
        if self.concurrency is not None:
            _check_range("concurrency", self.concurrency, 1, MAX_CONCURRENCY)
        if self.rate is not None:
            _check_range("rate", self.rate, 0.1, MAX_RATE)
        _check_range("duration_s", self.duration_s, 0.1, MAX_DURATION_S)
        _check_range("warmup_s", self.warmup_s, 0, MAX_WARMUP_S)
        _check_range("max_requests", self.max_requests, 1, MAX_REQUESTS)
        _check_range("deadline_s", self.deadline_s, 0.001, MAX_DEADLINE_S)
        _check_range("max_in_flight", self.max_in_flight, 1, MAX_IN_FLIGHT)
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What one run measured, over the requests sent after the warm-up.

    Attributes:
      rpc, target, mode, concurrency, rate: as in the `LoadSpec`.
      elapsed_s: wall seconds from the end of the warm-up to the last
        measured answer.
      requests: measured requests answered, with any status.
      ok: those answered OK.
      errors: the others, counted by status code name.
      qps: OK answers per second of `elapsed_s`.
      p50_ms, p95_ms, p99_ms, max_ms, mean_ms: latency of the OK answers,
        from the send (closed loop) or the due time (open loop); None
        without any.
      client_cpu: this process's CPU seconds (all threads) per wall second
        over the measured window: 1.0 is one core busy.
      client_user_s, client_system_s: that CPU time split by mode.
      warmup_requests: requests sent during the warm-up.
      hit_max_requests: the run stopped because max_requests were sent.
      send_lag_p99_ms, send_lag_max_ms: open loop: how late requests left
        after their due time (this client falling behind); None in closed
        loop.
    """

    rpc: str
    target: str
    mode: str
    concurrency: int | None
    rate: float | None
    elapsed_s: float
    requests: int
    ok: int
    errors: dict[str, int]
    qps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    client_cpu: float
    client_user_s: float
    client_system_s: float
    warmup_requests: int
    hit_max_requests: bool
    send_lag_p99_ms: float | None
    send_lag_max_ms: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The nearest-rank p-th percentile of values sorted ascending.

    The smallest value with at least p% of the values at or below it; None
    for no values.
    """
    if not sorted_values:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"p must be in [0, 100], got {p}")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def open_loop_due_times(
    rate: float, duration_s: float, max_requests: int
) -> list[float]:
    """When each open-loop request is due, in seconds from the start.

    Request i is due at i / rate, for every i due before `duration_s`, at
    most `max_requests` of them.
    """
    count = min(max_requests, math.ceil(duration_s * rate - 1e-9))
    return [i / rate for i in range(count)]


class _Recorder:
    """Collects the measured requests; one event loop writes it."""

    def __init__(self, measure_from: float):
        self.measure_from = measure_from
        self.latencies_s = array.array("d")
        self.send_lags_s = array.array("d")
        self.codes: collections.Counter[str] = collections.Counter()
        self.warmup_requests = 0
        self.last_done = measure_from

    def add(self, start: float, done: float, code: str) -> None:
        if start < self.measure_from:
            self.warmup_requests += 1
            return
        self.codes[code] += 1
        if code == _OK:
            self.latencies_s.append(done - start)
        self.last_done = max(self.last_done, done)


async def _call(stub, request: bytes, deadline_s: float) -> str:
    try:
        await stub(request, timeout=deadline_s)
    except grpc.aio.AioRpcError as e:
        return e.code().name
    return _OK


async def _closed_loop(stub, requests, spec, recorder, stop_at) -> bool:
    sent = 0

    async def caller() -> None:
        nonlocal sent
        while sent < spec.max_requests and time.perf_counter() < stop_at:
            request = requests[sent % len(requests)]
            sent += 1
            start = time.perf_counter()
            code = await _call(stub, request, spec.deadline_s)
            recorder.add(start, time.perf_counter(), code)

    await asyncio.gather(*(caller() for _ in range(spec.concurrency)))
    return sent >= spec.max_requests


async def _open_loop(stub, requests, spec, recorder, started) -> bool:
    due_times = open_loop_due_times(
        spec.rate, spec.warmup_s + spec.duration_s, spec.max_requests
    )
    slots = asyncio.Semaphore(spec.max_in_flight)
    tasks = set()

    async def send(request: bytes, due: float) -> None:
        try:
            code = await _call(stub, request, spec.deadline_s)
        finally:
            slots.release()
        recorder.add(due, time.perf_counter(), code)

    for i, offset in enumerate(due_times):
        due = started + offset
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        await slots.acquire()
        if due >= recorder.measure_from:
            recorder.send_lags_s.append(time.perf_counter() - due)
        task = asyncio.create_task(send(requests[i % len(requests)], due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return len(due_times) >= spec.max_requests


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


async def run_load(spec: LoadSpec, user_ids: Sequence[str]) -> LoadResult:
    """Sends load as `spec` says and measures the answers.

    Args:
      spec: target, mode and bounds.
      user_ids: users to ask for, used in turn from the first.

    Returns:
      The measurement after the warm-up.

    Raises:
      ValueError: no user ids.
      ConnectionError: the target did not accept a connection within
        CONNECT_TIMEOUT_S seconds.
    """
    if not user_ids:
        raise ValueError("user_ids is empty; give at least one user id")
    rpc = RPCS[spec.rpc]
    requests = [rpc.encode(u, spec.k, spec.model_version) for u in user_ids]

    async with grpc.aio.insecure_channel(
        spec.target, options=_CHANNEL_OPTIONS
    ) as channel:
        try:
            await asyncio.wait_for(
                channel.channel_ready(), timeout=CONNECT_TIMEOUT_S
            )
        except TimeoutError as e:
            raise ConnectionError(
                f"could not connect to {spec.target} within "
                f"{CONNECT_TIMEOUT_S:.0f} s; is the server running there?"
            ) from e
        stub = channel.unary_unary(rpc.method)

        started = time.perf_counter()
        recorder = _Recorder(measure_from=started + spec.warmup_s)
        stop_at = recorder.measure_from + spec.duration_s
        if spec.mode == "closed":
            load = _closed_loop(stub, requests, spec, recorder, stop_at)
        else:
            load = _open_loop(stub, requests, spec, recorder, started)
        task = asyncio.create_task(load)

        # The CPU window opens when the warm-up ends, unless the run ends
        # first (max_requests used up during the warm-up).
        await asyncio.wait(
            [task], timeout=max(0.0, recorder.measure_from - started)
        )
        cpu_start = _cpu_now()
        hit_max_requests = await task
        cpu_end = _cpu_now()

    return _result(spec, recorder, cpu_start, cpu_end, hit_max_requests)


def _cpu_now() -> tuple[float, float, float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (
        time.perf_counter(),
        time.process_time(),
        usage.ru_utime,
        usage.ru_stime,
    )


def _result(spec, recorder, cpu_start, cpu_end, hit_max_requests):
    latencies = sorted(recorder.latencies_s)
    lags = sorted(recorder.send_lags_s)
    requests = sum(recorder.codes.values())
    ok = recorder.codes[_OK]
    elapsed = max(recorder.last_done - recorder.measure_from, 1e-9)
    wall = max(cpu_end[0] - cpu_start[0], 1e-9)
    open_loop = spec.mode == "open"
    return LoadResult(
        rpc=spec.rpc,
        target=spec.target,
        mode=spec.mode,
        concurrency=spec.concurrency,
        rate=spec.rate,
        elapsed_s=elapsed if requests else 0.0,
        requests=requests,
        ok=ok,
        errors={c: n for c, n in sorted(recorder.codes.items()) if c != _OK},
        qps=ok / elapsed if requests else 0.0,
        p50_ms=_ms(percentile(latencies, 50)),
        p95_ms=_ms(percentile(latencies, 95)),
        p99_ms=_ms(percentile(latencies, 99)),
        max_ms=_ms(latencies[-1] if latencies else None),
        mean_ms=_ms(sum(latencies) / len(latencies) if latencies else None),
        client_cpu=(cpu_end[1] - cpu_start[1]) / wall,
        client_user_s=cpu_end[2] - cpu_start[2],
        client_system_s=cpu_end[3] - cpu_start[3],
        warmup_requests=recorder.warmup_requests,
        hit_max_requests=hit_max_requests,
        send_lag_p99_ms=_ms(percentile(lags, 99)) if open_loop else None,
        send_lag_max_ms=_ms(lags[-1] if lags else None) if open_loop else None,
    )


def users_from_dataset(
    data_dir: str | os.PathLike, count: int, seed: int
) -> list[str]:
    """Samples user ids of a MovieLens release, seeded.

    Args:
      data_dir: a folder `trainer.movielens.load` reads.
      count: how many ids; drawn with replacement only when the release
        has fewer users.
      seed: the sampling seed.

    Raises:
      FileNotFoundError, trainer.movielens.DataFormatError: from `load`.
      ValueError: count below 1.
    """
    import numpy as np

    from trainer import movielens

    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    users = np.unique(movielens.load(data_dir).ratings.user_id)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(users, size=count, replace=len(users) < count)
    return [str(u) for u in chosen.tolist()]


def users_from_file(path: str | os.PathLike) -> list[str]:
    """Reads user ids, one per line; blank lines are skipped.

    Raises:
      OSError: the file cannot be read.
      ValueError: it holds no ids.
    """
    text = Path(path).read_text(encoding="utf-8")
    users = [line.strip() for line in text.splitlines() if line.strip()]
    if not users:
        raise ValueError(f"{path} holds no user ids (expected one per line)")
    return users


def format_table(
    results: Sequence[LoadResult], labels: Sequence[str] | None = None
) -> str:
    """One line per result: load, QPS, latency, errors and client CPU."""
    labels = labels or [r.rpc for r in results]
    width = max(len("system"), *(len(label) for label in labels))
    header = (
        f"{'system':<{width}} {'load':>8} {'qps':>8} {'p50_ms':>7} "
        f"{'p95_ms':>7} {'p99_ms':>7} {'max_ms':>7} {'errors':>7} "
        f"{'cli_cpu':>7}"
    )
    lines = [header, "-" * len(header)]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for label, r in zip(labels, results):
        load = f"c={r.concurrency}" if r.mode == "closed" else f"r={r.rate:g}"
        lines.append(
            f"{label:<{width}} {load:>8} {r.qps:>8.1f} {ms(r.p50_ms):>7} "
            f"{ms(r.p95_ms):>7} {ms(r.p99_ms):>7} {ms(r.max_ms):>7} "
            f"{r.requests - r.ok:>7} {r.client_cpu:>7.2f}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadtest",
        description=__doc__.split("\n\n")[0].rstrip(".")
        + ": reports QPS, p50/p95/p99/max latency, errors by status code and "
        "the client's own CPU use.",
        epilog="Closed loop (--concurrency) measures sustainable throughput; "
        "open loop (--rate) measures latency at a given offered load, "
        "counted from each request's due time.",
    )
    p.add_argument(
        "--target",
        required=True,
        help="host:port of the server; only this address is dialled",
    )
    p.add_argument(
        "--rpc",
        choices=sorted(RPCS),
        default="retrieve",
        help="retrieve: the candidate service; predict: the query server's "
        "Predict; echo: a chain floor server (default: %(default)s)",
    )
    load = p.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        type=int,
        help="closed loop with this many callers (the default, with 1)",
    )
    load.add_argument(
        "--rate", type=float, help="open loop at this many requests/s"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="measured seconds (default: %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="unmeasured seconds first (default: %(default)s)",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=DEFAULT_MAX_REQUESTS,
        help=f"most requests sent, warm-up included (at most {MAX_REQUESTS:,};"
        " default: %(default)s)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=2.0,
        help="seconds each request may take (default: %(default)s)",
    )
    p.add_argument(
        "-k", type=int, default=10, help="movies per Retrieve (default: 10)"
    )
    p.add_argument(
        "--model-version",
        type=int,
        help="version a Predict pins (default: the newest)",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=1000,
        help="open loop: most requests outstanding (default: %(default)s)",
    )
    users = p.add_mutually_exclusive_group()
    users.add_argument(
        "--users-from-dataset",
        metavar="DIR",
        help="sample user ids from this MovieLens folder",
    )
    users.add_argument(
        "--users-file", metavar="FILE", help="user ids, one per line"
    )
    p.add_argument(
        "--num-users",
        type=int,
        default=1000,
        help="ids sampled from the dataset (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="sampling seed (default: 0)"
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a target that is not a loopback address",
    )
    p.add_argument("--out", type=Path, help="also write the result as JSON")
    p.add_argument("--log-level", default=None, help="default: WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    concurrency = args.concurrency
    if concurrency is None and args.rate is None:
        concurrency = 1
    try:
        spec = LoadSpec(
            target=args.target,
            rpc=args.rpc,
            concurrency=concurrency,
            rate=args.rate,
            duration_s=args.duration,
            warmup_s=args.warmup,
            max_requests=args.max_requests,
            deadline_s=args.deadline,
            k=args.k,
            model_version=args.model_version,
            max_in_flight=args.max_in_flight,
            allow_remote=args.allow_remote,
        )
        if args.users_file:
            user_ids = users_from_file(args.users_file)
        elif args.users_from_dataset:
            user_ids = users_from_dataset(
                args.users_from_dataset, args.num_users, args.seed
            )
        elif args.rpc == "echo":
            user_ids = [str(u) for u in range(1, args.num_users + 1)]
        else:
            parser.error(
                f"--rpc {args.rpc} needs --users-from-dataset DIR or "
                "--users-file FILE"
            )
    except (ValueError, OSError) as e:
        parser.error(str(e))

    try:
        result = asyncio.run(run_load(spec, user_ids))
    except ConnectionError as e:
        _log.error("%s", e)
        return 1

    print(format_table([result]))
    if result.errors:
        counts = ", ".join(f"{c} {n}" for c, n in result.errors.items())
        print(f"errors: {counts}")
    if result.hit_max_requests:
        print(f"stopped early: --max-requests {spec.max_requests} sent")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
