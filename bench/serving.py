"""Serving benchmark: the Retrieve chain against its own floor.

Starts on loopback, each as its own process like the real deployment: the
chain floor (two trivial gRPC hops, bench/chain_floor.py), the built-in
query server and the candidate service. Then, in one run, it load-tests
closed loop at each concurrency level, the systems interleaved so that the
machine's noise falls on all three alike:

  chain_floor   Echo through the floor's front to its back server;
  predict_only  the query server's Predict, alone;
  retrieve      the candidate service's Retrieve (one Predict, one search).

Each figure is the median over the repeats. It also reads each server
process's CPU time around every run (CPU per request, per hop), and times
the query tower and the index search in this process. Writes medians,
ratios (retrieve/floor, retrieve/predict_only) and the issue's targets to
the JSON, keeping (or refreshing from bench/results/index.json) its `index`
entries.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m bench.serving \\
        --out bench/results/serving.json
"""

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import loadtest
from serving_common import logs

_log = logging.getLogger("bench.serving")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "serving.json"
DEFAULT_INDEX_JSON = REPO / "bench" / "results" / "index.json"
# The sibling of the checkout that shared machines keep MovieLens in; the
# last place looked before downloading.
SHARED_ML100K = REPO.parent / "shared" / "data" / "ml-100k"

SYSTEMS = ("chain_floor", "predict_only", "retrieve")
# Measured only when asked for (--systems): the floor with asyncio servers,
# and the floor's thread pools without the interceptors (which separates
# what asyncio saves from what the interceptors cost).
OPTIONAL_SYSTEMS = ("chain_floor_aio", "chain_floor_bare")
READY_TIMEOUT_S = 240.0
TRAIN_TIMEOUT_S = 1800.0
STOP_GRACE_S = 1.0

# The issue's targets, as ratios of retrieve to the floor.
TARGET_QPS_AT_32 = 1.0
TARGET_P50_AT_1 = 2.0
TARGET_P99_AT_8 = 2.0


class BenchmarkError(RuntimeError):
    """A server or the trainer failed; the message quotes its log."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class _ServerProcess:
    """One server subprocess, its log, and its CPU time."""

    def __init__(self, name: str, argv: list[str], log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as log:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=REPO,
            )
        _log.info("started %s (pid %d): %s", name, self.pid, shlex.join(argv))

    @property
    def pid(self) -> int:
        return self._popen.pid

    def check_alive(self) -> None:
        """Raises BenchmarkError, quoting the log, if it has exited."""
        code = self._popen.poll()
        if code is not None:
            raise BenchmarkError(
                f"{self.name} exited with status {code}; last lines of "
                f"{self.log}:\n{_tail(self.log)}"
            )

    def cpu_s(self) -> float | None:
        """User plus system CPU seconds so far (all threads); None where
        /proc is missing."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the parenthesised command name; utime and stime are
        # the 14th and 15th of the whole line.
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout=STOP_GRACE_S + 10)
            except subprocess.TimeoutExpired:
                _log.warning("%s did not stop on SIGTERM; killing", self.name)
                self._popen.kill()
                self._popen.wait()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The servers dial each other on loopback only; no proxy in between.
    for name in ("grpc_proxy", "https_proxy", "http_proxy"):
        env.pop(name, None)
        env.pop(name.upper(), None)
    return env


@dataclasses.dataclass(frozen=True)
class _System:
    """A system under test: where the load goes and which processes serve
    it."""

    name: str
    rpc: str
    target: str
    processes: dict[str, _ServerProcess]


def _wait_serving(process: _ServerProcess, port: int, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            process.check_alive()
            try:
                status = stub.Check(request, timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise BenchmarkError(
        f"{process.name} did not report SERVING within {timeout_s:.0f} s; "
        f"last lines of {process.log}:\n{_tail(process.log)}"
    )


def start_systems(
    wanted: Sequence[str],
    models_dir: Path,
    log_dir: Path,
    started: list[_ServerProcess],
    extra_args: dict[str, list[str]],
) -> dict[str, _System]:
    """Starts the servers the wanted systems need and waits until each
    reports SERVING.

    Args:
      wanted: names from SYSTEMS and OPTIONAL_SYSTEMS.
      models_dir: the models directory both services load from.
      log_dir: where each server's log goes.
      started: every process started is appended at once, so the caller
        can stop them even when a later one fails.
      extra_args: more command-line flags for "query" (query_service) and
        "candidate" (candidate_service), to compare their settings.

    Returns:
      The wanted systems by name.

    Raises:
      BenchmarkError: a server exited or did not become ready.
    """
    common = ["--host", "127.0.0.1", "--grace-seconds", str(STOP_GRACE_S)]
    models = ["--models-dir", str(models_dir)]
    processes: dict[str, _ServerProcess] = {}
    ports: dict[str, int] = {}

    def spawn(role: str, *argv: str) -> str:
        ports[role] = _free_port()
        process = _ServerProcess(
            role,
            [sys.executable, "-m", *argv, "--port", str(ports[role]), *common],
            log_dir,
        )
        started.append(process)
        processes[role] = process
        return f"127.0.0.1:{ports[role]}"

    systems = {}
    for floor, flags in (
        ("chain_floor", []),
        ("chain_floor_aio", ["--aio"]),
        ("chain_floor_bare", ["--bare"]),
    ):
        if floor in wanted:
            suffix = floor.removeprefix("chain_floor")
            back = spawn(
                f"floor_back{suffix}", "bench.chain_floor", "back", *flags
            )
            front = spawn(
                f"floor_front{suffix}",
                *("bench.chain_floor", "front", "--backend", back, *flags),
            )
            systems[floor] = (
                "echo",
                front,
                {
                    "front": f"floor_front{suffix}",
                    "back": f"floor_back{suffix}",
                },
            )
    if "predict_only" in wanted or "retrieve" in wanted:
        query = spawn(
            "query_server",
            *("query_service", "--backend", "builtin", *models),
            *extra_args.get("query", []),
        )
        systems["predict_only"] = ("predict", query, {"query": "query_server"})
    if "retrieve" in wanted:
        candidate = spawn(
            "candidate_service",
            *("candidate_service", "--query-server", query, *models),
            *extra_args.get("candidate", []),
        )
        systems["retrieve"] = (
            "retrieve",
            candidate,
            {"candidate": "candidate_service", "query": "query_server"},
        )

    for role, process in processes.items():
        _wait_serving(process, ports[role], READY_TIMEOUT_S)
    _log.info("servers SERVING: %s", ", ".join(processes))
    return {
        name: _System(
            name,
            rpc,
            target,
            {hop: processes[role] for hop, role in roles.items()},
        )
        for name, (rpc, target, roles) in systems.items()
        if name in wanted
    }


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How long and how hard each measurement runs."""

    duration_s: float
    warmup_s: float
    deadline_s: float
    k: int
    max_requests: int


def measure(
    system: _System,
    concurrency: int,
    settings: RunSettings,
    user_ids: Sequence[str],
) -> dict:
    """One closed-loop run against `system`, with the servers' CPU use.

    Returns:
      The load test's figures plus, per serving process, CPU milliseconds
      per request and cores used (both over the warm-up and the measured
      window together).

    Raises:
      BenchmarkError: a server process exited.
    """
    spec = loadtest.LoadSpec(
        target=system.target,
        rpc=system.rpc,
        concurrency=concurrency,
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        max_requests=settings.max_requests,
        deadline_s=settings.deadline_s,
        k=settings.k,
    )
    before = {r: p.cpu_s() for r, p in system.processes.items()}
    wall_start = time.perf_counter()
    result = asyncio.run(loadtest.run_load(spec, user_ids))
    wall = time.perf_counter() - wall_start
    after = {r: p.cpu_s() for r, p in system.processes.items()}
    for process in system.processes.values():
        process.check_alive()

    answered = max(1, result.requests + result.warmup_requests)
    server_ms, server_cores = {}, {}
    for role in system.processes:
        if before[role] is None or after[role] is None:
            continue
        used = after[role] - before[role]
        server_ms[role] = used / answered * 1e3
        server_cores[role] = used / wall
    return {
        "concurrency": concurrency,
        "qps": result.qps,
        "p50_ms": result.p50_ms,
        "p95_ms": result.p95_ms,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
        "requests": result.requests,
        "errors": result.errors,
        "client_cpu": result.client_cpu,
        "client_cpu_ms_per_request": (
            result.client_cpu * result.elapsed_s / max(1, result.requests)
        )
        * 1e3,
        "server_cpu_ms_per_request": server_ms,
        "server_cpu_cores": server_cores,
    }


def _median_or_none(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise_runs(runs: list[dict]) -> dict:
    """Folds the repeats at one concurrency into medians.

    Numbers become their median over the repeats (per role for the
    per-process figures), errors and requests are summed, and each
    repeat's QPS, p50 and p99 are kept under `runs`.
    """
    summary = {"concurrency": runs[0]["concurrency"], "repeats": len(runs)}
    for key in ("qps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "client_cpu"):
        summary[key] = _median_or_none([r[key] for r in runs])
    summary["client_cpu_ms_per_request"] = _median_or_none(
        [r["client_cpu_ms_per_request"] for r in runs]
    )
    for key in ("server_cpu_ms_per_request", "server_cpu_cores"):
        roles = sorted({role for r in runs for role in r[key]})
        summary[key] = {
            role: _median_or_none([r[key].get(role) for r in runs])
            for role in roles
        }
    summary["requests"] = sum(r["requests"] for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    summary["errors"] = errors
    summary["runs"] = [
        {k: r[k] for k in ("qps", "p50_ms", "p99_ms")} for r in runs
    ]
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def ratios(results: dict[str, list[dict]]) -> dict:
    """Retrieve over chain_floor and over predict_only, per concurrency.

    Each entry holds the ratio of the medians of QPS, p50 and p99 (QPS
    above 1 and latency below 1 mean retrieve does better).
    """
    out = {}
    retrieve = {e["concurrency"]: e for e in results.get("retrieve", [])}
    for base in (
        "chain_floor",
        "chain_floor_aio",
        "chain_floor_bare",
        "predict_only",
    ):
        if base not in results or not retrieve:
            continue
        rows = []
        for entry in results[base]:
            mine = retrieve.get(entry["concurrency"])
            if mine is None:
                continue
            rows.append(
                {
                    "concurrency": entry["concurrency"],
                    "qps": _ratio(mine["qps"], entry["qps"]),
                    "p50_ms": _ratio(mine["p50_ms"], entry["p50_ms"]),
                    "p99_ms": _ratio(mine["p99_ms"], entry["p99_ms"]),
                }
            )
        out[f"retrieve_vs_{base}"] = rows
    return out


def targets(ratio_table: dict) -> dict:
    """The issue's serving targets against the floor, met or not."""
    rows = {
        r["concurrency"]: r
        for r in ratio_table.get("retrieve_vs_chain_floor", [])
    }

    def check(concurrency: int, key: str, bound: float, at_least: bool):
        value = rows.get(concurrency, {}).get(key)
        if value is None:
            return {"ratio": None, "bound": bound, "met": None}
        met = value >= bound if at_least else value <= bound
        return {"ratio": value, "bound": bound, "met": met}

    return {
        "qps_at_32_at_least_floor": check(32, "qps", TARGET_QPS_AT_32, True),
        "p50_at_1_at_most_2x_floor": check(1, "p50_ms", TARGET_P50_AT_1, False),
        "p99_at_8_at_most_2x_floor": check(8, "p99_ms", TARGET_P99_AT_8, False),
    }


def _time_calls(call: Callable[[], object], calls: int) -> dict:
    for _ in range(min(50, calls)):
        call()
    wall_ns = []
    cpu_start = time.process_time()
    for _ in range(calls):
        start = time.perf_counter_ns()
        call()
        wall_ns.append(time.perf_counter_ns() - start)
    cpu = time.process_time() - cpu_start
    wall_ns.sort()
    return {
        "median_us": statistics.median(wall_ns) / 1e3,
        "p90_us": loadtest.percentile(wall_ns, 90) / 1e3,
        # All threads: TensorFlow may run parts of a call on its pools.
        "cpu_us_per_call": cpu / calls * 1e6,
        "calls": calls,
    }


def in_process_costs(
    models_dir: Path, user_ids: Sequence[str], k: int, calls: int
) -> dict:
    """Times the query tower and the index search in this process.

    Args:
      models_dir: the models directory; its newest version is timed.
      user_ids: users to embed, cycled; the first 32 form the batch.
      k: results per search.
      calls: timed calls per single-user measurement (a quarter of that
        for batches of 32).

    Returns:
      Per operation: median and p90 wall microseconds per call, and CPU
      microseconds per call; plus which version and index were timed.
    """
    import itertools

    from candidate_service.versions import load_version
    from query_service.models import ModelRegistry

    registry = ModelRegistry(models_dir, keep_versions=1)
    registry.refresh()
    model = registry.get()
    index = load_version(models_dir, model.version).index

    encoded = [u.encode("utf-8") for u in user_ids]
    users = itertools.cycle(encoded)
    batch = (encoded * 32)[:32]
    one_query = model.embed([encoded[0]])
    batch_queries = model.embed(batch)
    batch_calls = max(1, calls // 4)

    return {
        "query_tower_batch_1": _time_calls(
            lambda: model.embed([next(users)]), calls
        ),
        "query_tower_batch_32": _time_calls(
            lambda: model.embed(batch), batch_calls
        ),
        "index_search_batch_1": _time_calls(
            lambda: index.search(one_query, k), calls
        ),
        "index_search_batch_32": _time_calls(
            lambda: index.search(batch_queries, k), batch_calls
        ),
        "version": model.version,
        "k": k,
        "index": {
            "n": index.size,
            "dim": index.dimension,
            "method": index.config.method,
        },
    }


def _machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for package in ("grpcio", "tensorflow", "scann", "protobuf"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


def _resolve_data_dir(given: str | None) -> Path:
    from trainer import movielens

    if (
        not given
        and not os.environ.get(movielens.DATA_DIR_ENV)
        and (SHARED_ML100K / "u.data").is_file()
    ):
        given = str(SHARED_ML100K)
    # With nothing given or found, this downloads ml-100k (and verifies it).
    return movielens.resolve_data_dir(given)


def _train(data_dir: Path, models_dir: Path, log_dir: Path) -> None:
    log = log_dir / "trainer.log"
    argv = [
        sys.executable,
        "-m",
        "trainer",
        "--data-dir",
        str(data_dir),
        "--models-dir",
        str(models_dir),
    ]
    _log.info("training a version into %s (log: %s)", models_dir, log)
    with open(log, "wb") as f:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            cwd=REPO,
            timeout=TRAIN_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        raise BenchmarkError(
            f"training failed with status {done.returncode}; last lines of "
            f"{log}:\n{_tail(log)}"
        )


def _index_entries(
    out: Path, index_json: Path | None, run_index_bench: bool, extra: str
) -> dict:
    """The `index` keys to write: fresh from index_bench when asked, else
    from its JSON, else whatever `out` already held."""
    if run_index_bench:
        from bench import index_bench

        if index_json is None:
            raise ValueError("--run-index-bench needs --index-json PATH")
        argv = ["--out", str(index_json), *shlex.split(extra)]
        _log.info("running bench.index_bench %s", shlex.join(argv))
        index_bench.main(argv)
    if index_json is not None and index_json.is_file():
        data = json.loads(index_json.read_text(encoding="utf-8"))
        merged = {"index": data.get("index", [])}
        if "summary" in data:
            merged["index_summary"] = data["summary"]
        merged["index_source"] = (
            str(index_json.relative_to(REPO))
            if index_json.is_relative_to(REPO)
            else str(index_json)
        )
        return merged
    if out.is_file():
        previous = json.loads(out.read_text(encoding="utf-8"))
        return {
            key: previous[key]
            for key in ("index", "index_summary", "index_source")
            if key in previous
        }
    return {}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_results(results: dict[str, list[dict]]) -> str:
    """The systems' medians, one line per concurrency."""
    width = max(len("system"), *(len(name) for name in results))
    header = (
        f"{'system':<{width}} {'conc':>4} {'qps':>8} {'p50_ms':>7} "
        f"{'p99_ms':>7} "
        f"{'err':>5} {'cli_cpu':>7}  server CPU ms/request"
    )
    lines = [header, "-" * len(header)]
    for name, entries in results.items():
        for e in entries:
            cpu = ", ".join(
                f"{role} {_fmt(ms, '.3f')}"
                for role, ms in e["server_cpu_ms_per_request"].items()
            )
            lines.append(
                f"{name:<{width}} {e['concurrency']:>4} "
                f"{_fmt(e['qps'], '.1f'):>8} "
                f"{_fmt(e['p50_ms'], '.2f'):>7} {_fmt(e['p99_ms'], '.2f'):>7} "
                f"{sum(e['errors'].values()):>5} "
                f"{_fmt(e['client_cpu'], '.2f'):>7}  {cpu}"
            )
    return "\n".join(lines)


def format_ratios(ratio_table: dict, target_table: dict) -> str:
    lines = []
    for name, rows in ratio_table.items():
        lines.append(
            f"{name}  (qps ratio > 1, latency ratio < 1: retrieve better)"
        )
        for r in rows:
            lines.append(
                f"  c={r['concurrency']:<3} qps x{_fmt(r['qps'], '.2f')}  "
                f"p50 x{_fmt(r['p50_ms'], '.2f')}  "
                f"p99 x{_fmt(r['p99_ms'], '.2f')}"
            )
    for name, t in target_table.items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}
        lines.append(
            f"target {name}: ratio {_fmt(t['ratio'], '.2f')} against "
            f"{t['bound']:g}: {verdict[t['met']]}"
        )
    return "\n".join(lines)


def format_costs(costs: dict) -> str:
    index = costs["index"]
    title = (
        f"in process (version {costs['version']}, {index['n']} x "
        f"{index['dim']} {index['method']} index, k={costs['k']}):"
    )
    lines = [title]
    for name, c in costs.items():
        if isinstance(c, dict) and "median_us" in c:
            lines.append(
                f"  {name:<22} median {c['median_us']:8.1f} us  p90 "
                f"{c['p90_us']:8.1f} us  cpu {c['cpu_us_per_call']:8.1f} us"
            )
    return "\n".join(lines)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"levels must look like 1,8,32; got {text!r}"
        ) from e
    if not levels or any(
        not 1 <= c <= loadtest.MAX_CONCURRENCY for c in levels
    ):
        raise argparse.ArgumentTypeError(
            f"each level must be in [1, {loadtest.MAX_CONCURRENCY}]; "
            f"got {text!r}"
        )
    return levels


def _systems(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = SYSTEMS + OPTIONAL_SYSTEMS
    if not names or set(names) - set(known):
        raise argparse.ArgumentTypeError(
            f"systems must be among {', '.join(known)}; got {text!r}"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON out (default: bench/results/serving.json)",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        help="a models directory with a published version (default: train "
        "one into a temporary folder)",
    )
    p.add_argument(
        "--data-dir",
        help="MovieLens folder for training and user ids (default: "
        "$MOVIELENS_DATA_DIR, else ../shared/data/ml-100k, else download)",
    )
    p.add_argument(
        "--levels",
        type=_levels,
        default="1,8,32",
        help="closed-loop concurrency levels (default: %(default)s)",
    )
    p.add_argument(
        "--systems",
        type=_systems,
        default=",".join(SYSTEMS),
        help="systems to load-test, among "
        f"{', '.join(SYSTEMS + OPTIONAL_SYSTEMS)} (default: the first three)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="measured s per run (default: %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="unmeasured s per run (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per cell (default: %(default)s)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=2.0,
        help="per request, s (default: %(default)s)",
    )
    p.add_argument(
        "-k",
        type=int,
        default=10,
        help="movies per Retrieve (default: %(default)s)",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=loadtest.DEFAULT_MAX_REQUESTS,
        help="cap on requests per run (default: %(default)s)",
    )
    p.add_argument(
        "--num-users",
        type=int,
        default=1000,
        help="user ids sampled (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed (default: %(default)s)",
    )
    p.add_argument(
        "--in-process-calls",
        type=int,
        default=2000,
        help="timed calls per in-process cost, 0 skips them (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--index-json",
        type=Path,
        default=DEFAULT_INDEX_JSON,
        help="index benchmark results copied under `index` when present "
        "(default: bench/results/index.json)",
    )
    p.add_argument(
        "--run-index-bench",
        action="store_true",
        help="also run bench.index_bench into --index-json, after the "
        "servers stop (long)",
    )
    p.add_argument(
        "--index-only",
        action="store_true",
        help="measure nothing: only merge the index results into --out",
    )
    p.add_argument(
        "--index-bench-args",
        default="",
        help="extra arguments for bench.index_bench, e.g. "
        "'--sizes 1682:32,100000:64'",
    )
    p.add_argument(
        "--query-args",
        default="",
        help="extra flags for python -m query_service",
    )
    p.add_argument(
        "--candidate-args",
        default="",
        help="extra flags for python -m candidate_service, to compare settings",
    )
    p.add_argument(
        "--log-dir",
        type=Path,
        help="keep the servers' and trainer's logs here, else they go to a "
        "temporary folder removed at the end",
    )
    return p


def _run(args, log_dir: Path, models_dir: Path | None) -> dict:
    data_dir = _resolve_data_dir(args.data_dir)
    user_ids = loadtest.users_from_dataset(data_dir, args.num_users, args.seed)
    needs_model = args.in_process_calls > 0 or bool(
        {"predict_only", "retrieve"} & set(args.systems)
    )
    if models_dir is None and needs_model:
        models_dir = log_dir / "models"
        _train(data_dir, models_dir, log_dir)

    settings = RunSettings(
        duration_s=args.duration,
        warmup_s=args.warmup,
        deadline_s=args.deadline,
        k=args.k,
        max_requests=args.max_requests,
    )
    # Checks the bounds once, before anything starts.
    loadtest.LoadSpec(
        target="127.0.0.1:1",
        concurrency=max(args.levels),
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        max_requests=settings.max_requests,
        deadline_s=settings.deadline_s,
        k=settings.k,
    )

    runs: dict[tuple[str, int], list[dict]] = {}
    started: list[_ServerProcess] = []
    try:
        extra_args = {
            "query": shlex.split(args.query_args),
            "candidate": shlex.split(args.candidate_args),
        }
        systems = start_systems(
            args.systems, models_dir, log_dir, started, extra_args
        )
        for repeat in range(args.repeats):
            # Rotating the order spreads any drift of the machine's load
            # over all systems instead of always hitting the last one.
            order = args.systems[repeat % len(args.systems) :]
            order += args.systems[: repeat % len(args.systems)]
            for concurrency in args.levels:
                for name in order:
                    run = measure(
                        systems[name], concurrency, settings, user_ids
                    )
                    runs.setdefault((name, concurrency), []).append(run)
                    _log.info(
                        "repeat %d %s c=%d: %.0f qps, p50 %.2f ms, p99 "
                        "%.2f ms, %d errors, client cpu %.2f",
                        repeat + 1,
                        name,
                        concurrency,
                        run["qps"],
                        run["p50_ms"] or float("nan"),
                        run["p99_ms"] or float("nan"),
                        sum(run["errors"].values()),
                        run["client_cpu"],
                    )
    finally:
        for process in started:
            process.stop()

    results = {
        name: [summarise_runs(runs[(name, c)]) for c in args.levels]
        for name in SYSTEMS + OPTIONAL_SYSTEMS
        if name in args.systems
    }
    costs = None
    if args.in_process_calls > 0:
        costs = in_process_costs(
            models_dir, user_ids, args.k, args.in_process_calls
        )
    ratio_table = ratios(results)
    return {
        **results,
        "in_process_us": costs,
        "ratios": ratio_table,
        "targets": targets(ratio_table),
        "settings": {
            "levels": args.levels,
            "repeats": args.repeats,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "deadline_s": args.deadline,
            "k": args.k,
            "num_users": args.num_users,
            "seed": args.seed,
            "loop": "closed",
            "data_dir": str(data_dir),
            "models_dir": str(args.models_dir or "(trained, temporary)"),
            "query_args": args.query_args,
            "candidate_args": args.candidate_args,
            "aggregation": "median over repeats; ratios of the medians",
        },
    }


def _merge_index_only(args) -> int:
    previous = {}
    if args.out.is_file():
        previous = json.loads(args.out.read_text(encoding="utf-8"))
    entries = _index_entries(
        args.out, args.index_json, args.run_index_bench, args.index_bench_args
    )
    if not entries:
        _log.error("no index results at %s; nothing to merge", args.index_json)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({**previous, **entries}, indent=1) + "\n", encoding="utf-8"
    )
    _log.info(
        "merged %d index entries into %s", len(entries["index"]), args.out
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    logs.configure("INFO")
    if args.index_only:
        return _merge_index_only(args)

    begun = time.perf_counter()
    machine = _machine_info()
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "bench.serving", *argv])
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as scratch:
        log_dir = args.log_dir or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            result = _run(args, log_dir, args.models_dir)
        except BenchmarkError as e:
            _log.error("%s", e)
            return 1

    machine["load_average_at_end"] = list(os.getloadavg())
    previous = {}
    if args.out.is_file():
        previous = json.loads(args.out.read_text(encoding="utf-8"))
    document = {
        # Keys this run does not write (the index benchmark's, or the
        # lead's) stay as they were.
        **previous,
        **result,
        **_index_entries(
            args.out,
            args.index_json,
            args.run_index_bench,
            args.index_bench_args,
        ),
        "machine": machine,
        "command": command,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "total_s": time.perf_counter() - begun,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")

    systems = {
        name: result[name]
        for name in SYSTEMS + OPTIONAL_SYSTEMS
        if name in result
    }
    print(format_results(systems))
    print(format_ratios(result["ratios"], result["targets"]))
    if result["in_process_us"]:
        print(format_costs(result["in_process_us"]))
    print(f"total {document['total_s']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
