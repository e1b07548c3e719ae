"""service/admission.py alone: cost and deadline accounting, lanes, the priority pool."""

from __future__ import annotations

import threading
import time

import pytest

from service.admission import (
    DEFAULT_SECONDS_PER_DECODE,
    Admission,
    Lane,
    PriorityPool,
    Refusal,
    Ticket,
    lane_for,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission(**kw) -> tuple[Admission, Clock]:
    clock = Clock()
    adm = Admission(clock=clock, **kw)
    for lane in Lane:
        adm.observe(lane, 10, 1.0)  # 10 decodes a second, measured now
        adm.call_seconds_per_decode[lane] = 0.1
    return adm, clock


def test_lanes_by_cost():
    assert lane_for(1) is Lane.LIGHT and lane_for(4) is Lane.LIGHT
    assert lane_for(5) is Lane.HEAVY and lane_for(65) is Lane.HEAVY


def test_work_that_cannot_finish_before_its_deadline_is_refused():
    adm, clock = admission(headroom=1.0)
    first = adm.admit(65, clock.now + 10)  # 6.5 s of 10 s
    assert isinstance(first, Ticket)
    second = adm.admit(65, clock.now + 10)  # 13 s with the first ahead of it
    assert isinstance(second, Refusal)
    assert second.retry_after_s == 3 and "cannot finish" in second.detail  # 13 - 10 s
    assert isinstance(adm.admit(65, clock.now + 14), Ticket)  # a later deadline fits


def test_a_request_alone_is_tried_whatever_the_estimate():
    """With nothing ahead, even a pessimistic estimate admits it (and the pool runs it): the
    measurement it brings corrects the estimate."""
    adm, clock = admission(headroom=1.0)
    alone = adm.admit(200, clock.now + 5)  # 20 s estimated for 5 s
    assert isinstance(alone, Ticket) and adm.too_late(alone) is None
    assert isinstance(adm.admit(200, clock.now + 5), Refusal)  # not with work ahead


def test_release_frees_the_work_once():
    adm, clock = admission(headroom=1.0)
    ticket = adm.admit(65, clock.now + 10)
    assert adm.queued() == pytest.approx((65, 6.5))
    ticket.release()
    ticket.release()
    assert adm.queued() == (0, 0) and adm.in_flight == 0
    assert isinstance(adm.admit(65, clock.now + 10), Ticket)


def test_light_work_is_not_counted_behind_queued_heavy_work():
    """Heavy requests waiting do not delay a light one (it runs first); a heavy one already
    running does (it is never interrupted)."""
    adm, clock = admission(headroom=1.0)
    heavy = [adm.admit(33, clock.now + 30) for _ in range(2)]  # 6.6 s queued
    assert all(isinstance(t, Ticket) for t in heavy)
    assert isinstance(adm.admit(1, clock.now + 0.5), Ticket)  # 0.1 s for the light one
    heavy[0].start()
    assert isinstance(adm.admit(1, clock.now + 3), Refusal)  # 3.3 s + 0.1 + 0.1 > 3 s
    assert isinstance(adm.admit(1, clock.now + 4), Ticket)
    assert isinstance(adm.admit(33, clock.now + 7), Refusal)  # heavy waits for everything
    clock.now += 2.0  # the running call has 1.3 s of its estimate left
    assert isinstance(adm.admit(1, clock.now + 1.7), Ticket)  # 1.3 s + 0.1 + 0.1 + 0.1
    clock.now += 5.0  # past its estimate: it holds up no more than nothing
    assert isinstance(adm.admit(1, clock.now + 0.5), Ticket)
    heavy[0].finish()  # its call ended; its answer is being encoded outside the pool
    assert isinstance(adm.admit(1, clock.now + 0.5), Ticket)


def test_request_cap_whatever_the_cost():
    adm, clock = admission(max_requests=2, min_retry_s=2)
    assert all(isinstance(adm.admit(1, clock.now + 30), Ticket) for _ in range(2))
    refusal = adm.admit(1, clock.now + 30)
    assert isinstance(refusal, Refusal) and refusal.retry_after_s == 2
    assert "2 requests in flight (limit 2)" in refusal.detail


def test_workers_share_the_work_and_headroom_keeps_a_margin():
    adm, clock = admission(workers=2, headroom=0.5)
    assert isinstance(adm.admit(65, clock.now + 7), Ticket)  # 3.25 s of 3.5 s
    assert isinstance(adm.admit(10, clock.now + 7), Refusal)  # 3.75 s


def test_the_estimate_follows_measurements_and_reports_changes():
    seen = []
    adm = Admission(on_change=lambda r, d, s: seen.append((r, d, s)))
    assert adm.seconds_per_decode == {}  # nothing measured: the default is the guess
    assert adm.admit(65, time.monotonic() + 60).cost == 65
    assert seen[-1] == pytest.approx((1, 65, 65 * DEFAULT_SECONDS_PER_DECODE))
    adm.observe(Lane.HEAVY, 65, 65 * 0.01)  # the first measurement replaces the guess
    assert adm.seconds_per_decode[Lane.HEAVY] == pytest.approx(0.01)
    for _ in range(30):
        adm.observe(Lane.HEAVY, 65, 65 * 0.2)
    assert adm.seconds_per_decode[Lane.HEAVY] == pytest.approx(0.2, rel=1e-3)
    assert Lane.LIGHT not in adm.seconds_per_decode
    ticket = adm.admit(65, time.monotonic() + 60)
    assert seen[-1] == pytest.approx((2, 130, 130 * 0.2), rel=1e-3)
    changes = len(seen)
    ticket.release()
    assert seen[-1] == pytest.approx((1, 65, 13.0), rel=1e-3) and len(seen) == changes + 1
    light = adm.admit(1, time.monotonic() + 60)  # an unmeasured lane borrows the other's
    assert seen[-1] == pytest.approx((2, 66, 66 * 0.2), rel=1e-3) and light.lane is Lane.LIGHT


def test_an_unmeasured_lane_is_probed_by_one_request_whatever_the_guess():
    """The default guess (0.05 s a decode) is 50x too slow on a GPU. Once refused on it, heavy
    requests were never measured while light ones kept the service busy: on a CI run every
    /samples?n=256 beside /superresolve got 503 for 12 s, with Retry-After 23 s."""
    clock = Clock()
    adm = Admission(min_retry_s=1, clock=clock)
    light = adm.admit(1, clock.now + 3)
    assert isinstance(light, Ticket)
    probe = adm.admit(257, clock.now + 3)  # 12.9 s guessed for 3 s, with work ahead: tried
    assert isinstance(probe, Ticket) and probe.lane is Lane.HEAVY
    waiting = adm.admit(257, clock.now + 3)
    assert isinstance(waiting, Refusal) and waiting.retry_after_s == 1
    assert "measuring" in waiting.detail
    adm.lane_started(Lane.LIGHT)
    clock.now += 2.9  # overtaken and late by the guess, but a guess does not refuse it
    assert probe.overtaken and adm.too_late(probe) is None
    probe.start()
    clock.now += 0.5
    probe.finish()
    probe.release()  # 0.5 s for 257 decodes: about 0.002 s a decode, not 0.05
    assert adm.seconds_per_decode[Lane.HEAVY] == pytest.approx(0.5 / 257)
    assert isinstance(adm.admit(257, clock.now + 3), Ticket)  # measured: it fits
    assert isinstance(adm.admit(2570, clock.now + 3), Refusal)  # measured: it does not


def test_a_stale_estimate_is_probed_again_and_the_probe_replaces_it():
    """Refused requests are never measured: one slow outlier kept a lane's estimate high, and
    so the lane refused, for as long as other work kept the service busy."""
    adm, clock = admission(headroom=1.0, remeasure_after_s=30.0)
    for _ in range(3):
        adm.observe(Lane.HEAVY, 65, 65 * 1.0)  # outliers: 1 s a decode, not 0.1
    light = adm.admit(1, clock.now + 60)  # other work keeps the service busy
    assert isinstance(light, Ticket)
    assert isinstance(adm.admit(65, clock.now + 10), Refusal)  # 45 s estimated for 10 s
    clock.now += 29.0
    assert isinstance(adm.admit(65, clock.now + 10), Refusal)  # the estimate still holds
    clock.now += 1.0  # 30 s without a measurement: the next heavy request is the probe
    probe = adm.admit(65, clock.now + 10)
    assert isinstance(probe, Ticket) and probe.probe
    assert isinstance(adm.admit(65, clock.now + 10), Refusal)  # one probe at a time
    adm.lane_started(Lane.LIGHT)
    clock.now += 5.0
    assert probe.overtaken and adm.too_late(probe) is None  # a probe is tried
    probe.start()
    clock.now += 6.5
    probe.finish()
    probe.release()  # 0.1 s a decode again: it replaces the outliers' estimate
    assert adm.seconds_per_decode[Lane.HEAVY] == pytest.approx(0.1)
    assert adm.call_seconds_per_decode[Lane.HEAVY] == pytest.approx(0.1)
    fits = adm.admit(65, clock.now + 10)
    assert isinstance(fits, Ticket) and not fits.probe  # measured just now: not a probe


def test_release_measures_from_the_start_of_its_call():
    adm, clock = admission()
    ticket = adm.admit(10, clock.now + 30)
    ticket.start()
    clock.now += 2.0  # the call
    ticket.finish()
    clock.now += 1.0  # encoding the answer: 0.3 s per decode in all
    ticket.release()
    assert adm.seconds_per_decode[Lane.HEAVY] == pytest.approx(0.1 + 0.3 * (0.3 - 0.1))
    assert adm.call_seconds_per_decode[Lane.HEAVY] == pytest.approx(0.1 + 0.3 * (0.2 - 0.1))
    assert adm.seconds_per_decode[Lane.LIGHT] == 0.1


def test_a_micro_batch_is_measured_per_decode_of_the_batch():
    """A /superresolve request shares its call with its batch: 4 decodes in 0.8 s, then its
    own answer, measure 0.2 s per decode (not 0.8 s for its one decode)."""
    adm, clock = admission()
    ticket = adm.admit(1, clock.now + 30)
    ticket.ran_in_batch(clock.now, 4, 0.4)  # the batch's call: 0.1 s per decode
    assert ticket.computed and not ticket.running
    clock.now += 0.8
    ticket.release()
    assert adm.seconds_per_decode[Lane.LIGHT] == pytest.approx(0.1 + 0.3 * (0.2 - 0.1))
    assert adm.call_seconds_per_decode[Lane.LIGHT] == pytest.approx(0.1)


def test_a_running_call_holds_others_up_for_its_call_not_its_answers_encoding():
    """A heavy request whose answer takes long to encode (outside the pool) needs that time
    itself, but a light request behind its running call waits only for the call. Counting the
    encoding as pool time refused light requests that would have been served in time (a CI
    run: 8 of 133 /superresolve beside /samples?n=256)."""
    adm, clock = admission(headroom=1.0)
    adm.seconds_per_decode[Lane.HEAVY] = 0.3  # call 0.1 s per decode, encoding 0.2 more
    heavy = adm.admit(20, clock.now + 30)
    heavy.start()  # 2 s of call ahead of any light request, 6 s until the heavy one is done
    assert isinstance(adm.admit(1, clock.now + 2.5), Ticket)  # 2 s + its own 0.1 s
    assert isinstance(adm.admit(1, clock.now + 2.0), Refusal)
    assert isinstance(adm.admit(20, clock.now + 5.5), Refusal)  # its own 6 s do not fit


def test_a_refusal_retries_after_at_least_the_setting():
    adm, clock = admission(headroom=1.0, min_retry_s=7)
    ticket = adm.admit(20, clock.now + 5)
    clock.now += 0.01
    adm.admit(1, clock.now + 5)
    adm.lane_started(Lane.LIGHT)  # a light call overtakes the heavy ticket
    clock.now += 3.5
    assert adm.too_late(ticket).retry_after_s == 7  # 2 s of work, but never under 7


def test_too_late_once_overtaken():
    adm, clock = admission(headroom=1.0)
    ticket = adm.admit(20, clock.now + 5)  # 2 s of work
    assert adm.too_late(ticket) is None
    clock.now += 0.01
    light = adm.admit(1, clock.now + 5)
    adm.lane_started(Lane.LIGHT)  # the light call overtakes the waiting heavy ticket
    light.start()
    clock.now += 3.5  # 1.5 s left
    refusal = adm.too_late(ticket)
    assert ticket.overtaken and not light.overtaken
    assert isinstance(refusal, Refusal) and refusal.retry_after_s >= 1


def test_late_but_not_overtaken_is_tried():
    """Lateness with nobody overtaking (a slow machine) is left to the deadline: a 504."""
    adm, clock = admission(headroom=1.0)
    ticket = adm.admit(20, clock.now + 5)
    clock.now += 3.5
    assert adm.too_late(ticket) is None
    other = adm.admit(20, clock.now + 5)
    adm.lane_started(Lane.HEAVY)  # the same lane: reordering within a lane is not overtaking
    other.start()
    assert not ticket.overtaken and adm.too_late(ticket) is None


def test_pool_runs_light_before_waiting_heavy_and_fifo_within_a_lane():
    started: list[Lane] = []
    pool = PriorityPool(1, on_start=started.append)
    gate, order = threading.Event(), []
    blocker = pool.submit(Lane.HEAVY, gate.wait, 10)
    time.sleep(0.05)  # the blocker is running now
    futures = [pool.submit(Lane.HEAVY, order.append, "h1"),
               pool.submit(Lane.LIGHT, order.append, "l1"),
               pool.submit(Lane.HEAVY, order.append, "h2"),
               pool.submit(Lane.LIGHT, order.append, "l2")]
    gate.set()
    for f in [blocker, *futures]:
        f.result(10)
    assert order == ["l1", "l2", "h1", "h2"]
    assert started == [Lane.HEAVY, Lane.LIGHT, Lane.LIGHT, Lane.HEAVY, Lane.HEAVY]
    pool.shutdown()


def test_pool_hands_exceptions_back_and_runs_the_queue_on_shutdown():
    pool = PriorityPool(2)
    failing = pool.submit(Lane.LIGHT, lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(10)
    done = [pool.lane(Lane.HEAVY).submit(time.sleep, 0.01) for _ in range(4)]
    pool.shutdown(wait=True)
    assert all(f.done() and f.exception() is None for f in done)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(Lane.LIGHT, print)


def test_a_revised_cost_is_what_admission_counts():
    changes = []
    adm = Admission(on_change=lambda requests, decodes, seconds: changes.append(decodes))
    ticket = adm.admit(64, time.monotonic() + 30)
    assert adm.queued()[0] == 64 and ticket.lane is Lane.HEAVY
    ticket.revise(3)
    assert adm.queued()[0] == 3 and changes[-1] == 3 and ticket.lane is Lane.HEAVY
    ticket.release()
    assert adm.queued()[0] == 0
