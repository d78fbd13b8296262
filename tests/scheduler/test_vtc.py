"""VTC policy unit tests: selection, FIFO, the counter lift, weights, length prediction, persistence."""

from __future__ import annotations

import json
import random

import pytest

from loraplex.scheduler.policies.base import QueuedRequest
from loraplex.scheduler.policies.registry import make_policy
from loraplex.scheduler.policies.vtc import VTCPolicy


def rq(rid: str, tenant: str, inp: int = 10, out: int = 10, t: float = 0.0) -> QueuedRequest:
    return QueuedRequest(rid, tenant, inp, out, t)


def serve(p: VTCPolicy, rid: str, tenant: str, inp: int = 10, out: int = 10, now: float = 0.0):
    """Enqueue, admit (it must be the pick) and finish one request of ``out`` tokens."""
    r = rq(rid, tenant, inp, out, now)
    p.enqueue(r, now)
    assert p.pick(now) == r
    p.admit(r, now)
    for _ in range(out):
        p.on_output_tokens(tenant, rid, 1)
    p.on_finish(rid, out)


def test_cost_is_wp_input_at_admission_and_wq_per_output_token():
    p = VTCPolicy(w_p=1.0, w_q=2.0)
    r = rq("r1", "a", inp=100, out=5)
    p.enqueue(r, 0.0)
    p.admit(r, 0.0)
    assert p.counters()["a"] == 100.0
    assert p.on_output_tokens("a", "r1", 3) == 6.0
    assert p.counters()["a"] == 106.0
    p.on_finish("r1", 5)  # 2 tokens were never reported: charged now
    assert p.counters()["a"] == 100.0 + 2 * 5
    q = VTCPolicy(w_p=0.5, w_q=3.0)
    serve(q, "x", "b", inp=10, out=4)
    assert q.counters()["b"] == 0.5 * 10 + 3.0 * 4


def test_picks_backlogged_tenant_with_lowest_counter():
    p = VTCPolicy()
    rng = random.Random(7)
    n = 0
    for t in "abcd":  # four tenants, several requests each, random input lengths
        for _ in range(6):
            p.enqueue(rq(f"r{n}", t, inp=rng.randint(1, 50), out=0), 0.0)
            n += 1
    order = []
    while (r := p.pick(1.0)) is not None:
        c = p.counters()
        assert c[r.tenant] == min(c[t] for t in p.backlogged())
        order.append(r.tenant)
        p.admit(r, 1.0)
    assert order[:4] == list("abcd")  # all start at 0: ties in enqueue order
    assert len(set(order[4:12])) > 1  # interleaved by counters, not served tenant by tenant


def test_ties_go_to_the_earliest_enqueued_head():
    p = VTCPolicy()
    p.enqueue(rq("b1", "b"), 0.0)
    p.enqueue(rq("a1", "a"), 0.0)  # lifted to b's counter 0: a tie
    assert p.pick(0.0).request_id == "b1"


def test_fifo_within_a_tenant():
    p = VTCPolicy()
    ids = [f"a{i}" for i in range(5)]
    for i, rid in enumerate(ids):
        p.enqueue(rq(rid, "a", t=float(i)), float(i))
    order = []
    while (r := p.pick(9.0)) is not None:
        order.append(r.request_id)
        p.admit(r, 9.0)
    assert order == ids


def test_lift_to_min_of_backlogged_tenants():
    p = VTCPolicy()
    for t, inp in (("a", 100), ("b", 200), ("d", 1000)):
        p.enqueue(rq(f"{t}1", t, inp=inp, out=0), 0.0)
    p.enqueue(rq("a2", "a", out=0), 0.0)
    p.enqueue(rq("b2", "b", out=0), 0.0)
    for _ in range(3):
        p.admit(p.pick(0.0), 0.0)  # a1, b1, d1: a=100, b=200 still queued; d=1000 left
    assert p.counters() == {"a": 100.0, "b": 200.0, "d": 1000.0}
    p.enqueue(rq("c1", "c"), 1.0)  # new tenant, empty queue: lifted to min(100, 200)
    assert p.counters()["c"] == 100.0
    p.enqueue(rq("d2", "d"), 1.0)  # returning tenant above the minimum keeps its own counter
    assert p.counters()["d"] == 1000.0
    p.enqueue(rq("c2", "c"), 1.0)  # no lift while the tenant still has something queued
    assert p.counters()["c"] == 100.0


def test_lift_to_last_tenant_that_left_when_nobody_is_backlogged():
    p = VTCPolicy()
    serve(p, "a0", "a", inp=100, out=0)  # a: 100, and a left the queue last
    p.enqueue(rq("b1", "b"), 1.0)  # nobody queued: b lifted to c[a]
    assert p.counters()["b"] == 100.0
    p.admit(p.pick(1.0), 1.0)  # b: 110, b left last
    p.enqueue(rq("a1", "a"), 2.0)  # a lifted to c[b] = 110: idle time is not banked
    assert p.counters()["a"] == 110.0
    # the last leaver itself keeps its own counter
    p.admit(p.pick(2.0), 2.0)  # a: 120, a left last
    p.enqueue(rq("a2", "a"), 3.0)
    assert p.counters()["a"] == 120.0


def test_lcf_has_no_lift():
    p = make_policy("lcf")
    serve(p, "a0", "a", inp=100)
    p.enqueue(rq("b1", "b"), 1.0)
    assert p.counters()["b"] == 0.0


def test_weights_divide_every_increment():
    p = VTCPolicy({"a": 2.0, "b": 0.5})
    r = rq("r", "a", inp=100, out=10)
    p.enqueue(r, 0.0)
    p.admit(r, 0.0)
    assert p.counters()["a"] == 50.0
    assert p.on_output_tokens("a", "r", 4) == 4.0  # 2 * 4 / 2
    p.on_finish("r", 10)
    assert p.counters()["a"] == (100 + 2 * 10) / 2
    serve(p, "s", "b", inp=10, out=0)  # lifted to 60, then + 10 / 0.5
    assert p.counters()["b"] == 60.0 + 20.0
    assert p.weight("zzz") == 1.0
    with pytest.raises(ValueError):
        VTCPolicy({"a": 0.0})


def test_length_prediction_charges_prediction_then_corrects():
    p = VTCPolicy(predict_output=True, ema_alpha=0.2)
    r = rq("r1", "a", inp=10, out=100)  # no history: predicted max_tokens = 100
    p.enqueue(r, 0.0)
    p.admit(r, 0.0)
    assert p.counters()["a"] == 10 + 2 * 100
    assert p.on_output_tokens("a", "r1", 30) == 0.0  # within the prediction: already paid
    p.on_finish("r1", 40)  # finished early: refund 2 * 60
    assert p.counters()["a"] == 10 + 2 * 40
    assert p.prediction("a") == 40.0

    r2 = rq("r2", "a", inp=0, out=100)
    p.enqueue(r2, 1.0)
    p.admit(r2, 1.0)
    assert p.counters()["a"] == 90 + 2 * 40  # charged the EMA
    assert p.on_output_tokens("a", "r2", 39) == 0.0
    assert p.on_output_tokens("a", "r2", 3) == 2 * 2  # 42 > 40: only tokens beyond it
    p.on_finish("r2", 50)
    assert p.counters()["a"] == 90 + 2 * 50  # net: exactly w_p*in + w_q*actual
    assert p.prediction("a") == pytest.approx(0.8 * 40 + 0.2 * 50)

    capped = VTCPolicy(predict_output=True, initial_prediction=64)
    r3 = rq("r3", "b", inp=0, out=16)  # prediction capped at max_tokens
    capped.enqueue(r3, 0.0)
    capped.admit(r3, 0.0)
    assert capped.counters()["b"] == 2 * 16


def test_cancel_queued_and_running():
    p = VTCPolicy(predict_output=True, initial_prediction=50)
    p.enqueue(rq("a1", "a", out=100), 0.0)
    p.enqueue(rq("a2", "a", out=100), 0.0)
    assert p.cancel("a1") is True
    assert p.queue_len("a") == 1 and p.pick(0.0).request_id == "a2"
    p.admit(p.pick(0.0), 0.0)  # 10 + 2*50
    p.on_output_tokens("a", "a2", 20)
    assert p.cancel("a2") is True  # settled at the 20 tokens served: refund 2*30
    assert p.counters()["a"] == 10 + 2 * 20
    assert p.on_output_tokens("a", "a2", 5) == 0.0  # late reports are ignored
    assert p.on_finish("a2", 90) == 0.0
    assert p.cancel("a2") is False and p.cancel("nope") is False
    assert p.num_running() == 0 and len(p) == 0 and p.backlogged() == []


def test_contract_errors():
    p = VTCPolicy()
    p.enqueue(rq("r", "a"), 0.0)
    with pytest.raises(ValueError):
        p.enqueue(rq("r", "a"), 0.0)
    with pytest.raises(KeyError):
        p.admit(rq("other", "a"), 0.0)
    p.admit(p.pick(0.0), 0.0)
    with pytest.raises(ValueError):
        p.on_output_tokens("b", "r", 1)


def test_snapshot_restore_round_trip():
    p = VTCPolicy({"a": 2.0}, predict_output=True)
    serve(p, "a0", "a", inp=30, out=7)
    serve(p, "b0", "b", inp=5, out=3)
    for i in range(3):
        p.enqueue(rq(f"a{i + 1}", "a", t=1.0), 1.0)
        p.enqueue(rq(f"c{i}", "c", inp=7, out=4, t=1.0), 1.0)
    p.admit(p.pick(2.0), 2.0)
    running = next(iter(p._running))
    p.on_output_tokens(p._running[running].tenant, running, 2)

    state = json.loads(json.dumps(p.snapshot()))  # JSON-serialisable
    q = VTCPolicy({"a": 2.0}, predict_output=True)
    q.restore(state)
    assert q.snapshot() == p.snapshot()

    def drive(x: VTCPolicy) -> list:
        log = [x.on_output_tokens(x._running[running].tenant, running, 3)]
        x.on_finish(running, 9)
        x.enqueue(rq("d0", "d"), 3.0)
        while (r := x.pick(4.0)) is not None:
            log.append(r.request_id)
            x.admit(r, 4.0)
        return [*log, x.counters()]

    assert drive(p) == drive(q)
    with pytest.raises(ValueError):
        make_policy("lcf").restore(state)
    counters_only = {k: v for k, v in state.items() if k not in ("queues", "running")}
    r = VTCPolicy()
    r.restore(counters_only)
    assert r.counters() == state["counters"] and len(r) == 0
