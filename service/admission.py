"""Cost-aware, deadline-aware admission of inference work, and the priority pool it runs in.

Work is counted in decodes (one 128x128 output of the decoder): /superresolve costs 1,
/samples?n costs n + 1 (the mean and n samples), /traverse?steps costs steps. The seconds one
decode takes are measured as the service runs, as two moving averages per lane (a /superresolve
request shares its call with its micro-batch): from the start of a request's call in the pool to
the end of that call, which is how long it holds up the calls waiting behind it, and from the
start of its call to its release, which adds encoding its answer (outside the pool) and is what
the request itself needs before its deadline. So the queued work is also known in seconds.
A lane's first measurement replaces the guess it started from (DEFAULT_SECONDS_PER_DECODE, or
the other lane's measurement); later ones are averaged in. Until a lane is measured, its
estimate is a guess: one request of it is tried whatever that guess says (the probe, which
brings the measurement), and the others of its lane are asked to retry after the least
Retry-After rather than after what the guess predicts. An estimate is also stale once its lane
has gone REMEASURE_AFTER_S without a measurement (refused requests are never measured, so one
slow outlier could otherwise keep a lane refused for as long as other work keeps the service
busy): the lane's next request is its probe again, and what it measures replaces the estimate.

Two lanes share the inference pool: light requests (cost <= LIGHT_MAX_COST, e.g. every
/superresolve) always run before heavy ones waiting; each lane is FIFO. A running call is never
interrupted, so a light request waits at most for the heavy calls already running.

`admit(cost, deadline)` returns a Ticket, or a Refusal when the work queued ahead of the request
(and the request itself) cannot finish before its deadline, or when too many requests are in
flight. A request with nothing ahead of it is always tried (the estimate may be stale). The
Refusal's `retry_after_s` is the time until enough of the queue should have run. A ticket is
released once its request leaves (`release`, idempotent). When a heavy call is about to start
and can no longer finish before its deadline (light work overtook it), the pool refuses it then
(`Refused`), before spending any time on it. A request whose call has ended (its answer is
being encoded) holds up no one's call.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

LIGHT_MAX_COST = 4  # decodes: /superresolve, and /samples or /traverse with very few images
DEFAULT_SECONDS_PER_DECODE = 0.05  # until measured (the paper-size decoder on 2 CPU cores)
SMOOTHING = 0.3  # weight of the newest measurement in the moving average (not of a probe's)
REMEASURE_AFTER_S = 30.0  # a lane measured longer ago than this is probed again


class Lane(IntEnum):
    """Pool priority: a lower value runs first."""

    LIGHT = 0
    HEAVY = 1


def lane_for(cost: float) -> Lane:
    return Lane.LIGHT if cost <= LIGHT_MAX_COST else Lane.HEAVY


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused at the door, and when to retry."""

    detail: str
    retry_after_s: int


class Refused(Exception):  # noqa: N818 - the name reads as what happened
    """Raised by the pool when an admitted call can no longer finish before its deadline."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


@dataclass(eq=False)
class Ticket:
    """Admitted work of one request; `release()` once the request has left."""

    cost: float
    lane: Lane
    deadline: float  # clock seconds
    admitted_at: float
    _owner: Admission | None = field(default=None, repr=False)
    started_at: float | None = None  # clock seconds, once its call started in the pool
    finished_at: float | None = None  # clock seconds, once that call ended
    overtaken: bool = False  # a call of a lighter lane started while it waited
    released: bool = False  # its request has left
    call_decodes: float = 0.0  # the decodes of its call: its own, or its micro-batch's
    probe: bool = False  # tried to measure its lane: what it measures replaces the estimate

    @property
    def computed(self) -> bool:
        """Its call in the pool has ended (the answer may still be encoding)."""
        return self.finished_at is not None

    @property
    def running(self) -> bool:
        """Its call is running in the pool now."""
        return self.started_at is not None and not self.computed

    def start(self) -> None:
        """Its call starts in the pool now."""
        if self._owner is not None:
            self.started_at, self.call_decodes = self._owner.clock(), self.cost

    def finish(self) -> None:
        """Its call in the pool has ended: it no longer holds up anyone's call."""
        self.finished_at = self._owner.clock() if self._owner is not None else time.monotonic()

    def revise(self, cost: float) -> None:
        """Its work is now known to be `cost` decodes (e.g. /photo once its faces are found);
        its lane stays the one it was admitted in."""
        self.cost = cost
        if self._owner is not None and not self.released:
            self._owner._changed()

    def ran_in_batch(self, started_at: float, decodes: int, seconds: float) -> None:
        """Its work ran in a micro-batch of `decodes` that started at `started_at` (clock
        seconds) and took `seconds`, and has ended."""
        self.started_at, self.call_decodes = started_at, decodes
        self.finished_at = started_at + seconds

    def release(self) -> None:
        """The request has left: its work no longer counts (idempotent), and from the start of
        its call to now (inference, then encoding its answer) is measured into the estimate."""
        if self._owner is not None and not self.released:
            self.released = True
            self._owner._release(self)


class Admission:
    """Counts the admitted work per lane, and refuses what cannot finish in time.

    `workers` is the number of calls the pool runs at once; `max_requests` caps the admitted
    requests whatever their cost; `headroom` is the share of the time left to the deadline that
    the queued work may fill (the rest covers decoding, encoding and the estimate's error).
    `min_retry_s` is the least Retry-After of a refusal (FACESR_RETRY_AFTER_S).
    `remeasure_after_s` is how long a lane's estimate holds without a new measurement.
    `on_change(requests, decodes, seconds)` is called with the admitted work after every change
    (the metrics).
    """

    def __init__(self, workers: int = 1, max_requests: int = 32, headroom: float = 0.8,
                 min_retry_s: int = 1, remeasure_after_s: float = REMEASURE_AFTER_S,
                 on_change: Callable[[int, float, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.workers, self.max_requests, self.headroom = workers, max_requests, headroom
        self.min_retry_s, self.remeasure_after_s = min_retry_s, remeasure_after_s
        self.on_change, self.clock = on_change, clock
        # measured seconds per decode, per lane; a lane not measured yet has no entry
        self.seconds_per_decode: dict[Lane, float] = {}  # from its call's start to its release
        self.call_seconds_per_decode: dict[Lane, float] = {}  # from its call's start to its end
        self._measured_at: dict[Lane, float] = {}  # clock seconds of each lane's last measurement
        self._tickets: set[Ticket] = set()
        self._lock = threading.Lock()

    # --- the door -------------------------------------------------------------------------

    def admit(self, cost: float, deadline: float) -> Ticket | Refusal:
        """A Ticket for `cost` decodes that must be done by `deadline` (clock seconds), or the
        Refusal that says why not and when to retry."""
        lane, min_retry_s = lane_for(cost), self.min_retry_s
        with self._lock:
            if len(self._tickets) >= self.max_requests:
                return Refusal(f"overloaded: {len(self._tickets)} requests in flight (limit "
                               f"{self.max_requests}); retry later", min_retry_s)
            needed = self._seconds_until_done(cost, lane)
            now = self.clock()
            budget = (deadline - now) * self.headroom
            probe = self._is_probe(lane, now)
            # alone, or as its lane's probe, it is tried whatever the estimate
            if needed > budget and self._tickets and not probe:
                if not self._measured(lane):  # its probe is running: retry soon
                    return Refusal(
                        f"overloaded: the first request of this size is measuring what such "
                        f"requests cost here; retry in {min_retry_s} s", min_retry_s)
                retry = max(min_retry_s, math.ceil(needed - budget))
                return Refusal(
                    f"overloaded: the work queued ahead ({needed:.1f} s with this request) "
                    f"cannot finish within the request's {budget / self.headroom:.1f} s; "
                    f"retry in {retry} s", retry)
            ticket = Ticket(cost, lane, deadline, now, self, probe=probe)
            self._tickets.add(ticket)
        self._changed()
        return ticket

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            self._tickets.discard(ticket)
            if ticket.started_at is not None:
                self._learn(self.seconds_per_decode, ticket.lane, ticket.call_decodes,
                            self.clock() - ticket.started_at, replace=ticket.probe)
                if ticket.finished_at is not None:
                    self._learn(self.call_seconds_per_decode, ticket.lane, ticket.call_decodes,
                                ticket.finished_at - ticket.started_at, replace=ticket.probe)
        self._changed()

    def _measured(self, lane: Lane) -> bool:
        """A request of `lane` has been measured: its estimate is no longer a guess."""
        return lane in self.seconds_per_decode

    def _is_probe(self, lane: Lane, now: float) -> bool:
        """A request of `lane` now would be its probe: the lane is not measured yet, or not for
        `remeasure_after_s`, and none of its requests is in flight (lock held)."""
        stale = now - self._measured_at.get(lane, -math.inf) >= self.remeasure_after_s
        return stale and all(t.lane != lane for t in self._tickets)

    @staticmethod
    def _per_decode(average: dict[Lane, float], lane: Lane) -> float:
        """The estimate of one decode in `lane`: its measurement, else the other lane's (the
        same machine and model), else the default."""
        if lane in average:
            return average[lane]
        return next(iter(average.values()), DEFAULT_SECONDS_PER_DECODE)

    def lane_started(self, lane: Lane) -> None:
        """A call of `lane` starts in the pool now (PriorityPool's `on_start`): every waiting
        ticket of a heavier lane has been overtaken. Order within a lane is not overtaking."""
        with self._lock:
            for t in self._tickets:
                if t.started_at is None and t.lane > lane:
                    t.overtaken = True

    def _seconds_until_done(self, cost: float, lane: Lane) -> float:
        """Estimated seconds until a new request of `cost` in `lane` would be done (lock held).

        Ahead of it: the calls of every admitted request of its lane and of lighter lanes whose
        call has not ended, and the heavier calls that are already running (they are never
        interrupted); a running call counts only what is left of its estimate. A request whose
        call has ended (its answer is being encoded) holds up no call. The request itself needs
        its call and its answer's encoding."""
        now = self.clock()
        work = cost * self._per_decode(self.seconds_per_decode, lane)
        for t in self._tickets:
            if not t.computed and (t.lane <= lane or t.running):
                estimate = t.cost * self._per_decode(self.call_seconds_per_decode, t.lane)
                if t.running:
                    estimate = max(0.0, estimate - (now - t.started_at))
                work += estimate
        return work / self.workers

    # --- measurements and state -----------------------------------------------------------

    def observe(self, lane: Lane, decodes: float, seconds: float) -> None:
        """A finished request: `decodes` of work took `seconds` from the start of its call to its
        release (updates that estimate)."""
        with self._lock:
            self._learn(self.seconds_per_decode, lane, decodes, seconds)
        self._changed()

    def _learn(self, average: dict[Lane, float], lane: Lane, decodes: float, seconds: float,
               replace: bool = False) -> None:
        """Update one of the moving averages (lock held). The first measurement, and a probe's,
        replaces the estimate: averaged into a default that may be 50x off (a GPU), or into a
        stale outlier, it left heavy requests refused, and so unmeasured, for as long as light
        ones kept the service busy."""
        if decodes > 0 and seconds > 0:
            old = seconds / decodes if replace else average.get(lane, seconds / decodes)
            average[lane] = old + SMOOTHING * (seconds / decodes - old)
            self._measured_at[lane] = self.clock()

    def queued(self) -> tuple[float, float]:
        """The admitted work: (decodes, estimated seconds)."""
        return self._admitted()[1:]

    def _admitted(self) -> tuple[int, float, float]:
        """(requests, decodes, estimated seconds) admitted and not yet released."""
        with self._lock:
            decodes = sum(t.cost for t in self._tickets)
            seconds = sum(t.cost * self._per_decode(self.seconds_per_decode, t.lane)
                          for t in self._tickets)
            return len(self._tickets), decodes, seconds

    @property
    def in_flight(self) -> int:
        return len(self._tickets)

    def too_late(self, ticket: Ticket) -> Refusal | None:
        """The Refusal for an admitted call that could have finished by its deadline when it
        was admitted, but no longer can because lighter work overtook it. A call that is late
        for any other reason (a slow machine, its own decoding) is tried: its deadline answers."""
        if not ticket.overtaken or ticket.probe or not self._measured(ticket.lane):
            return None  # a probe is tried, and a guess refuses nothing: the deadline answers
        needed = ticket.cost * self.seconds_per_decode[ticket.lane] / self.workers
        left = ticket.deadline - self.clock()
        if needed <= left * self.headroom or needed > (
                ticket.deadline - ticket.admitted_at) * self.headroom:
            return None
        return Refusal(f"overloaded: this request waited while lighter ones ran, and its "
                       f"{needed:.1f} s of work can no longer finish in the {left:.1f} s left; "
                       "retry later", max(self.min_retry_s, math.ceil(needed)))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(*self._admitted())


class PriorityPool:
    """A thread pool that runs the lowest lane first, FIFO within a lane."""

    def __init__(self, workers: int, name: str = "facesr-ort",
                 on_start: Callable[[Lane], None] | None = None) -> None:
        self.on_start = on_start  # called with the lane of each call as it starts
        self._heap: list[tuple[int, int, Callable[[], Any], Future]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, lane: Lane, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the inference pool is shut down")
            heapq.heappush(self._heap, (int(lane), next(self._seq), lambda: fn(*args), future))
            self._cond.notify()
        return future

    def lane(self, lane: Lane) -> Executor:
        """An Executor view that submits to `lane` (for loop.run_in_executor)."""
        return _LaneExecutor(self, lane)

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if not self._heap:
                    return
                lane, _, call, future = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue
            if self.on_start is not None:
                self.on_start(Lane(lane))
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                future.set_exception(exc)


class _LaneExecutor(Executor):
    def __init__(self, pool: PriorityPool, lane: Lane) -> None:
        self.pool, self.lane = pool, lane

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self.pool.submit(self.lane, lambda: fn(*args, **kwargs))
