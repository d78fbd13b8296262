"""The heap-based policies decide exactly as the linear scans they replaced (``policies/linear.py``).

Random workloads (weights, w_p/w_q, length prediction, token reports, finishes, cancels of queued
and running requests, admissions out of the policy's order, snapshot round trips) are replayed
through both, and every pick and every counter is compared after every step.
"""

from __future__ import annotations

import random

import pytest

from loraplex.scheduler.policies.base import FairnessPolicy, QueuedRequest
from loraplex.scheduler.policies.registry import make_policy, make_reference_policy

SEEDS = [random.Random(100 + i).randrange(1 << 30) for i in range(12)]


def _options(name: str, rng: random.Random) -> tuple[dict[str, float], dict]:
    tenants = [f"t{i}" for i in range(rng.randint(1, 40))]
    weights = {t: rng.choice([0.5, 1.0, 2.0, 3.0]) for t in tenants if rng.random() < 0.4}
    opts: dict = {"w_p": rng.choice([0.5, 1.0]), "w_q": rng.choice([1.0, 2.0])}
    if name != "fcfs" and rng.random() < 0.5:
        opts["predict_output"] = True
        opts["initial_prediction"] = rng.choice([None, 8.0])
    return weights, opts


def replay(name: str, seed: int, steps: int = 1500) -> tuple[int, int]:
    """Drive both implementations with the same random events; returns (picks, restores)."""
    rng = random.Random(seed)
    weights, opts = _options(name, rng)
    n_tenants = rng.randint(1, 60)
    fast: FairnessPolicy = make_policy(name, weights, **opts)
    ref: FairnessPolicy = make_reference_policy(name, weights, **opts)
    queued: list[QueuedRequest] = []
    running: dict[str, QueuedRequest] = {}
    now, picks, restores, next_id = 0.0, 0, 0, 0

    def both(method: str, *args):
        a, b = getattr(fast, method)(*args), getattr(ref, method)(*args)
        assert a == b, f"step {step}: {method}{args}: heap {a!r} != linear {b!r}"
        return a

    for step in range(steps):
        now += rng.random() * 0.01
        r = rng.random()
        if r < 0.35:  # a request arrives (skewed tenants: a few hot, a long tail)
            tenant = f"t{min(int(rng.paretovariate(1.2)) - 1, n_tenants - 1)}"
            req = QueuedRequest(
                f"r{next_id}", tenant, rng.randint(1, 64), rng.randint(1, 64), now, None
            )
            next_id += 1
            both("enqueue", req, now)
            queued.append(req)
        elif r < 0.65:  # the scheduler admits what the policy picks
            got = both("pick", now)
            if got is not None:
                picks += 1
                both("admit", got, now)
                queued.remove(got)
                running[got.request_id] = got
        elif r < 0.80 and running:  # tokens come in
            rid = rng.choice(sorted(running))
            both("on_output_tokens", running[rid].tenant, rid, rng.randint(1, 8))
        elif r < 0.90 and running:  # a request finishes
            rid = rng.choice(sorted(running))
            both("on_finish", rid, rng.randint(0, running.pop(rid).max_tokens))
        elif r < 0.95:  # a client goes away: queued, running, or an unknown id
            pool = [q.request_id for q in queued] + sorted(running) + ["nobody"]
            rid = rng.choice(pool)
            both("cancel", rid)
            queued[:] = [q for q in queued if q.request_id != rid]
            running.pop(rid, None)
        elif r < 0.97 and queued:  # the scheduler admits out of order (allowed by the contract)
            req = rng.choice(queued)
            both("admit", req, now)
            queued.remove(req)
            running[req.request_id] = req
        elif r < 0.98:  # snapshot round trip, crossing implementations both ways
            fast_state, ref_state = fast.snapshot(), ref.snapshot()
            assert fast_state == ref_state
            fast = make_policy(name, weights, **opts)
            ref = make_reference_policy(name, weights, **opts)
            fast.restore(ref_state)
            ref.restore(fast_state)
            restores += 1
        assert fast.counters() == ref.counters(), f"step {step}: counters differ"
        assert fast.backlogged() == ref.backlogged()
    return picks, restores


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["vtc", "lcf", "fcfs"])
def test_heap_policy_decides_exactly_as_the_linear_scan(name: str, seed: int) -> None:
    picks, restores = replay(name, seed)
    assert picks > 200 and restores > 0  # the replay did exercise picks and round trips


@pytest.mark.parametrize("name", ["vtc", "lcf", "fcfs"])
def test_many_tenants_and_ties(name: str) -> None:
    """Many tenants with equal counters (every tie broken by enqueue order) and lifts."""
    fast, ref = make_policy(name), make_reference_policy(name)
    for i in range(3000):
        req = QueuedRequest(f"r{i}", f"t{(i * 7919) % 500}", 10, 10, float(i))
        fast.enqueue(req, float(i))
        ref.enqueue(req, float(i))
        if i % 3 == 0:
            a, b = fast.pick(float(i)), ref.pick(float(i))
            assert a == b
            fast.admit(a, float(i))
            ref.admit(b, float(i))
            fast.on_finish(a.request_id, i % 11)
            ref.on_finish(b.request_id, i % 11)
    while (a := fast.pick(1e9)) is not None:
        assert a == ref.pick(1e9)
        fast.admit(a, 1e9)
        ref.admit(a, 1e9)
    assert ref.pick(1e9) is None
    assert fast.counters() == ref.counters()


def test_stale_entries_are_compacted() -> None:
    """Token reports for backlogged tenants push new heap entries; the heap stays O(backlogged)."""
    p = make_policy("vtc")
    for i in range(10):
        p.enqueue(QueuedRequest(f"q{i}", f"t{i}", 1, 1, 0.0), 0.0)
    running = []
    for i in range(10):
        req = QueuedRequest(f"r{i}", f"t{i}", 1, 10_000, 0.0)
        p.enqueue(req, 0.0)
        running.append(req)
    for req in running:  # admit the second request of each tenant, out of order
        p.admit(req, 0.0)
    for k in range(5000):
        req = running[k % 10]
        p.on_output_tokens(req.tenant, req.request_id, 1)
        p.pick(0.0)
    assert len(p._backlog) <= 2 * 10 + 64 + 1
