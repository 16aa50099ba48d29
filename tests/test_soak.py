"""A 60-second soak at a fixed rate: no errors, no memory growth.

Slow: run with `make test-slow`.
"""

import os
import subprocess
import sys
import threading

import grpc
import pytest

from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from tests import traffic
from tests.conftest import FIGURES, REPO, free_port

pytestmark = pytest.mark.slow

SOAK_SECONDS = 60
RATE = 100


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _start(module, *args):
    return subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1", *args],
        cwd=REPO,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_minute_at_a_fixed_rate_has_no_errors_and_no_memory_growth(
    small_published,
):
    from candidate_service.client import wait_until_serving

    models, _ = small_published
    query_port, candidate_port = free_port(), free_port()
    query = _start(
        "query_service", "--port", str(query_port), "--models-dir", str(models)
    )
    candidate = _start(
        "candidate_service",
        "--port",
        str(candidate_port),
        "--models-dir",
        str(models),
        "--query-server",
        f"127.0.0.1:{query_port}",
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{candidate_port}") as ch:
            assert wait_until_serving(ch, 120)
            stub = pb_grpc.RetrievalServiceStub(ch)

            def request(i):
                user = str(1 + i % 40)
                return user, pb.RetrieveRequest(
                    user_id=user, k=10, exclude_seen=bool(i % 2)
                )

            # Warm-up: caches, allocator pools and gRPC buffers settle.
            stop = threading.Event()
            threading.Timer(10, stop.set).start()
            traffic.steady(stub.Retrieve, request, RATE, stop)
            before = _rss_bytes(candidate.pid)

            stop = threading.Event()
            threading.Timer(SOAK_SECONDS, stop.set).start()
            tally = traffic.steady(stub.Retrieve, request, RATE, stop)
            after = _rss_bytes(candidate.pid)
    finally:
        for process in (candidate, query):
            process.terminate()
            process.wait(timeout=30)

    growth = (after - before) / before
    FIGURES["soak"] = {
        **tally.figures(),
        "seconds": SOAK_SECONDS,
        "rate": RATE,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "rss_growth": round(growth, 4),
    }
    assert tally.sent >= RATE * SOAK_SECONDS * 0.9
    assert tally.failed == 0, tally.codes
    assert growth < 0.05
