"""A small steady-rate traffic generator for lifecycle tests, bounded in
count and time, that tallies outcomes by status code and model version."""

import collections
import dataclasses
import threading
import time

import grpc


@dataclasses.dataclass
class Tally:
    """What a run of traffic saw.

    Attributes:
      sent: requests sent.
      codes: count by status code name ("OK" for successes).
      versions: count of successful responses by model version.
      responses: (user_id, response) of each success, in completion order.
      failures: (time.monotonic() at completion, code name) of each failure.
      successes: time.monotonic() at completion of each success.
    """

    sent: int = 0
    codes: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    versions: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    responses: list = dataclasses.field(default_factory=list)
    failures: list = dataclasses.field(default_factory=list)
    successes: list = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.sent - self.codes["OK"]

    def figures(self) -> dict:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "by_code": dict(self.codes),
            "by_version": {str(k): v for k, v in self.versions.items()},
        }


def steady(
    call,
    make_request,
    rate: float,
    stop: threading.Event,
    max_seconds: float = 120.0,
    timeout_s: float = 2.0,
) -> Tally:
    """Sends `rate` requests a second until `stop` is set.

    Args:
      call: a unary-unary multi-callable (stub.Retrieve).
      make_request: i -> (user_id, request) for the i-th request.
      rate: requests per second.
      stop: set it to end the run.
      max_seconds: hard bound on the run's length.
      timeout_s: each request's deadline.
    """
    tally = Tally()
    lock = threading.Lock()
    started = time.monotonic()
    pending = []

    def done(user_id, future):
        try:
            response = future.result()
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
            response = None
        with lock:
            tally.codes[code] += 1
            if response is None:
                tally.failures.append((time.monotonic(), code))
            else:
                tally.successes.append(time.monotonic())
                tally.versions[response.model_version] += 1
                tally.responses.append((user_id, response))

    i = 0
    while not stop.is_set() and time.monotonic() - started < max_seconds:
        user_id, request = make_request(i)
        future = call.future(request, timeout=timeout_s)
        future.add_done_callback(lambda f, u=user_id: done(u, f))
        pending.append(future)
        tally.sent += 1
        i += 1
        # Fixed schedule: the i-th request goes at started + i / rate.
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            stop.wait(delay)
    for future in pending:
        try:
            future.result()
        except grpc.RpcError:
            pass
    # Callbacks run on gRPC's threads; give the last ones a moment to land.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with lock:
            if sum(tally.codes.values()) >= tally.sent:
                break
        time.sleep(0.01)
    return tally


def in_background(fn, *args, **kwargs):
    """Runs fn in a thread; returns (thread, result box)."""
    box = {}

    def run():
        box["result"] = fn(*args, **kwargs)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box
