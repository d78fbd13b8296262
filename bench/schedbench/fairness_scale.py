"""VTC's fairness bounds re-checked at 10,000 backlogged tenants in the simulator.

``loraplex.tooling.simulator`` drives the heap-based VTC (whose decisions are the linear scan's,
``tests/scheduler/test_heap_equivalence.py``) on one continuously batched server with
``M = max_batch_tokens``.  Every tenant starts with 3 requests queued and then sends 3x its fair
share (Poisson), so all stay backlogged.  After every step (the only points where service
changes) it checks, as ``tests/scheduler/test_bound.py`` does for two tenants:

* Thm 4.4 on ``pairs`` random tenant pairs: over any interval in which both stay backlogged,
  ``|W_f - W_g| <= 2U`` with ``U = max(w_p * L_input, w_q * M)`` (W: service the simulated
  server gave, not the policy's counters);
* Lemma 4.3 on all tenants: the counters of the backlogged tenants stay within ``U`` of each
  other (max - min over every backlogged tenant, every step).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from loraplex.scheduler.policies.base import QueuedRequest
from loraplex.scheduler.policies.registry import make_policy
from loraplex.tooling.simulator import ServerConfig, simulate


@dataclass(frozen=True)
class FairnessRow:
    tenants: int
    steps: int
    admissions: int
    backlogged_share: float  # of (tenant, step) observations
    worst_pair: float  # largest |W_f - W_g| over a both-backlogged interval, sampled pairs
    two_u: float
    worst_counter_spread: float  # max - min counter over the backlogged tenants, any step
    u: float
    seconds: float


def arrivals(n: int, m: int, l_in: int, l_out: int, duration_s: float, step_s: float, seed: int):
    rng = random.Random(seed)
    mean = (1 + l_in) / 2 + (1 + l_out) / 2
    per_s = (m / mean) / ((1 + l_out) / 2 * step_s)  # requests/s the server completes
    rate = 3.0 * per_s / n  # each tenant asks for 3x its fair share
    out: list[QueuedRequest] = []
    k = 0
    for t in range(n):
        times = [0.0, 0.0, 0.0]
        x = 0.0
        while (x := x + rng.expovariate(rate)) < duration_s:
            times.append(x)
        for a in times:
            out.append(
                QueuedRequest(
                    f"r{k}", f"t{t}", rng.randint(1, l_in), rng.randint(1, l_out), a, None
                )
            )
            k += 1
    out.sort(key=lambda q: (q.arrival, q.request_id))
    return out


def check(
    tenants: int = 10_000,
    m: int = 50_000,
    l_in: int = 32,
    l_out: int = 32,
    steps: int = 1000,
    pairs: int = 2000,
    seed: int = 0,
) -> FairnessRow:
    step_s = 0.01
    duration = steps * step_s
    reqs = arrivals(tenants, m, l_in, l_out, duration, step_s, seed)
    policy = make_policy("vtc")
    u = max(policy.w_p * l_in, policy.w_q * m)
    rng = random.Random(seed + 1)
    sample = [tuple(rng.sample(range(tenants), 2)) for _ in range(pairs)]
    names = [f"t{i}" for i in range(tenants)]
    lo: list[float | None] = [None] * pairs
    hi: list[float | None] = [None] * pairs
    state = {"worst": 0.0, "spread": 0.0, "backlogged": 0, "obs": 0}

    def on_step(t: float, service: dict[str, float], pol) -> None:  # type: ignore[no-untyped-def]
        queued = pol.backlogged()
        state["backlogged"] += len(queued)
        state["obs"] += tenants
        if queued:
            counters = pol.counters()
            vals = [counters[k] for k in queued]
            state["spread"] = max(state["spread"], max(vals) - min(vals))
        for i, (f, g) in enumerate(sample):
            a, b = names[f], names[g]
            if pol.queue_len(a) == 0 or pol.queue_len(b) == 0:
                lo[i] = hi[i] = None  # the both-backlogged interval ends here
                continue
            d = service.get(a, 0.0) - service.get(b, 0.0)
            lo_i, hi_i = lo[i], hi[i]
            lo[i] = d if lo_i is None else min(lo_i, d)
            hi[i] = d if hi_i is None else max(hi_i, d)
            state["worst"] = max(state["worst"], hi[i] - lo[i])  # type: ignore[operator]

    server = ServerConfig(
        max_batch_tokens=m, decode_step_s=step_s, prefill_s_per_token=0.0, usage_every=4
    )
    t0 = time.perf_counter()
    res = simulate(policy, reqs, server, duration, on_step=on_step)
    seconds = time.perf_counter() - t0
    admitted = sum(len(v) for v in res.latencies.values())
    return FairnessRow(
        tenants,
        len(res.times),
        admitted,
        state["backlogged"] / max(1, state["obs"]),
        state["worst"],
        2 * u,
        state["spread"],
        u,
        seconds,
    )


if __name__ == "__main__":
    print(check(tenants=1000, steps=300))
