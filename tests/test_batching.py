"""Concurrent Retrieve calls share query-server calls, and each still gets
its own answer, error or deadline."""

import threading
import time

import numpy as np
import pytest

from candidate_service.batching import Coalescer
from candidate_service.history import UserHistory
from candidate_service.retriever import Query, Retrieval
from candidate_service.versions import ServingVersion
from serving_common.errors import DeadlineExceeded, NotFound, Unavailable


def _serving(version=1):
    history = UserHistory.build(
        np.array(["a", "b"]), np.array([1, 2]), np.array([1, 2, 3])
    )
    return ServingVersion(
        version=version,
        index=None,
        manifest={},
        history=history,
        titles_by_id={1: "x", 2: "y", 3: "z"},
    )


class FakeRetriever:
    """Answers each query with its k as the single movie id, after
    `delay_s`, recording the batches it was given."""

    def __init__(self, delay_s=0.0, error=None):
        self.delay_s = delay_s
        self.error = error
        self.batches = []
        self.lock = threading.Lock()

    def retrieve(self, serving, queries, timeout_s):
        with self.lock:
            self.batches.append((serving.version, [q.user_id for q in queries]))
        time.sleep(self.delay_s)
        if self.error:
            raise self.error
        return [
            Retrieval(
                version=serving.version,
                movie_ids=np.array([q.k]),
                titles=[q.user_id],
                scores=np.array([1.0], dtype=np.float32),
            )
            for q in queries
        ]


def _concurrently(coalescer, calls):
    """Runs (serving, query, timeout) calls in threads; returns outcomes."""
    outcomes = [None] * len(calls)

    def run(i, args):
        try:
            outcomes[i] = coalescer.retrieve(*args)
        except Exception as e:  # noqa: BLE001 - recorded for the assertions
            outcomes[i] = e

    threads = [
        threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)
    ]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in threads:
        t.join(10)
    return outcomes


def test_a_lone_request_goes_at_once_in_a_batch_of_one():
    fake = FakeRetriever()
    coalescer = Coalescer(fake)

    for k in (1, 2, 3):
        result = coalescer.retrieve(_serving(), Query("a", k), 1.0)
        assert result.movie_ids.tolist() == [k]

    assert [len(users) for _, users in fake.batches] == [1, 1, 1]


def test_requests_arriving_while_a_batch_is_out_share_the_next_one():
    fake = FakeRetriever(delay_s=0.2)
    coalescer = Coalescer(fake)
    serving = _serving()

    outcomes = _concurrently(
        coalescer, [(serving, Query(f"u{i}", i + 1), 5.0) for i in range(10)]
    )

    # The first goes alone; the nine that came while it was out go together.
    assert [len(users) for _, users in fake.batches] == [1, 9]
    for i, outcome in enumerate(outcomes):
        assert outcome.titles == [f"u{i}"]
        assert outcome.movie_ids.tolist() == [i + 1]


def test_batches_are_capped_at_max_batch():
    fake = FakeRetriever(delay_s=0.2)
    coalescer = Coalescer(fake, max_batch=4)
    serving = _serving()

    _concurrently(
        coalescer, [(serving, Query(f"u{i}", 1), 5.0) for i in range(9)]
    )

    assert [len(users) for _, users in fake.batches] == [1, 4, 4]


def test_a_failed_batch_fails_each_of_its_callers_with_the_same_error():
    fake = FakeRetriever(delay_s=0.1, error=Unavailable("query server down"))
    coalescer = Coalescer(fake)
    serving = _serving()

    outcomes = _concurrently(
        coalescer, [(serving, Query(f"u{i}", 1), 5.0) for i in range(5)]
    )

    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert [len(users) for _, users in fake.batches] == [1, 4]


def test_a_strict_query_for_an_unknown_user_fails_alone():
    fake = FakeRetriever()
    coalescer = Coalescer(fake)

    with pytest.raises(NotFound, match="ghost"):
        coalescer.retrieve(_serving(), Query("ghost", 1, strict=True), 1.0)
    assert fake.batches == []


def test_queries_of_two_versions_in_one_batch_each_use_their_own():
    fake = FakeRetriever(delay_s=0.2)
    coalescer = Coalescer(fake)
    old, new = _serving(1), _serving(2)

    outcomes = _concurrently(
        coalescer,
        [(old, Query("first", 1), 5.0)]
        + [(old if i % 2 else new, Query(f"u{i}", 1), 5.0) for i in range(6)],
    )

    assert [o.version for o in outcomes[1:]] == [2, 1, 2, 1, 2, 1]
    assert sorted(v for v, _ in fake.batches[1:]) == [1, 2]


def test_a_caller_whose_deadline_passes_while_waiting_gets_deadline_exceeded():
    fake = FakeRetriever(delay_s=0.5)
    coalescer = Coalescer(fake)
    serving = _serving()

    outcomes = _concurrently(
        coalescer,
        [(serving, Query("slow", 1), 5.0), (serving, Query("hasty", 1), 0.1)],
    )

    assert isinstance(outcomes[0], Retrieval)
    assert isinstance(outcomes[1], DeadlineExceeded)
    # The queue is not left stuck: the next request is served.
    assert coalescer.retrieve(serving, Query("later", 7), 5.0).movie_ids == [7]
    assert [users for _, users in fake.batches] == [["slow"], ["later"]]
