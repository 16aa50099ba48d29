"""Coalesces concurrent Retrieve calls into one query-server call and one
batched search.

Every Retrieve needs one Predict on the query server, and a gRPC hop costs
far more CPU than the model or the search. While one batch is out at the
query server, requests that arrive wait; when it returns, all of them go
together as the next batch. Nothing ever waits on a timer: a lone request
goes at once, so batching adds no latency when the service is idle, and the
busier it is, the bigger the batches.
"""

import dataclasses
import threading
import time

from candidate_service.retriever import Query, Retrieval, Retriever
from candidate_service.versions import ServingVersion
from serving_common.errors import DeadlineExceeded, NotFound


@dataclasses.dataclass(eq=False)
class _Slot:
    """One waiting request and, once its batch is back, its outcome."""

    serving: ServingVersion
    query: Query
    deadline: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    lead: bool = False
    result: Retrieval | None = None
    error: Exception | None = None


class Coalescer:
    """Runs queries through a `Retriever`, batching those that arrive while
    a batch is in flight.

    Args:
      retriever: does the work.
      max_batch: most queries in one batch.
    """

    def __init__(self, retriever: Retriever, max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._retriever = retriever
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Slot] = []
        self._busy = False

    def retrieve(
        self, serving: ServingVersion, query: Query, timeout_s: float
    ) -> Retrieval:
        """One query's result, possibly computed in a batch with others.

        Raises:
          DeadlineExceeded: `timeout_s` passed before the batch returned.
          NotFound, Unavailable, DeadlineExceeded: as `Retriever.retrieve`.
        """
        # A strict query for an unknown user fails alone, before it can
        # share a batch with others.
        if query.strict and serving.history.seen(query.user_id) is None:
            raise NotFound(
                f"user_id {query.user_id!r} is unknown to model version "
                f"{serving.version}"
            )
        slot = _Slot(serving, query, time.monotonic() + timeout_s)
        with self._lock:
            self._pending.append(slot)
            if not self._busy:
                self._busy = True
                slot.lead = True
        if not slot.lead and not slot.done.wait(timeout_s):
            with self._lock:
                # Leave the queue, unless the lead was handed over just now:
                # then this thread must run the batch, or nobody will.
                if not slot.lead:
                    if slot in self._pending:
                        self._pending.remove(slot)
                    raise DeadlineExceeded(
                        f"no answer within {timeout_s:.3f} s; the query "
                        "server is slow or overloaded"
                    )
        if slot.lead:
            self._run_batch()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _run_batch(self) -> None:
        with self._lock:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]

        # One version per retriever call: a swap between arrivals can leave
        # two in one batch, and each query must use the version it started
        # with.
        by_version: dict[int, list[_Slot]] = {}
        for slot in batch:
            by_version.setdefault(id(slot.serving), []).append(slot)
        for slots in by_version.values():
            timeout = max(s.deadline for s in slots) - time.monotonic()
            try:
                results = self._retriever.retrieve(
                    slots[0].serving,
                    [s.query for s in slots],
                    max(timeout, 1e-3),
                )
            except Exception as e:  # noqa: BLE001 - handed to each caller
                for s in slots:
                    s.error = e
            else:
                for s, r in zip(slots, results):
                    s.result = r

        # Hand the lead to the oldest waiting request, if any, before
        # answering: its batch starts while these responses go out.
        with self._lock:
            if self._pending:
                self._pending[0].lead = True
                self._pending[0].done.set()
            else:
                self._busy = False
        for slot in batch:
            slot.done.set()
