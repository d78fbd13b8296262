"""Discrete-event simulator of one continuously batched server driving any fairness policy.

No model runs; time advances in *steps*.  Server model (``ServerConfig``):

* capacity: a request reserves ``input_tokens + max_tokens`` batch tokens from admission to finish
  (S-LoRA reserves KV for the full output); running reservations never exceed
  ``M = max_batch_tokens``; optionally at most ``max_batch_size`` requests run.
* admission at step boundaries: the policy's ``pick`` is admitted while it fits; when it does not,
  admission stops (strict, nothing skips ahead: the paper's rule); ``prefill_token_budget`` caps the
  new input tokens per step.
* a step: every running request emits one token (a new one is prefilled and emits its first token in
  that step); it lasts ``decode_step_s + prefill_s_per_token * new input tokens``.  Defaults
  (M = 10,000, 40 ms, 0.1 ms/token) serve ~1.75 req/s of 256/256 requests, ~900 tokens/s, close to
  the paper's A10G + Llama-2-7B server.
* usage: ``on_output_tokens`` every ``usage_every`` tokens per request, ``on_finish`` at the end.
* service (the paper's ``W``, unweighted) is credited at the end of the step that served it:
  ``w_p * input`` when prefilled, ``w_q`` per output token (``w_p``, ``w_q`` from the policy).

Workloads (``paper_workload``): the paper's synthetic suites, deterministic (gap 60/rpm, random
phase) or Poisson arrivals, seeded.  ``time_scale`` stretches the duration and every period;
``length_scale`` multiplies token counts (with ``ServerConfig().scaled(length_scale)`` the capacity
in requests/s stays the same).

Metrics (``summarize``): the paper's service difference (Tables 2-6): 19 windows of 60 s starting at
``k * (T - 30 s) / 20``, ``k = 1..19`` (60 s and 30 s scale with ``time_scale``).  Per window,
``s_j`` = service rate of tenant ``j`` over its weight, ``r_j`` = its requested rate (cost of its
arrivals in the window); the window's value is ``sum_j min(max_k s_k - s_j, |r_j - s_j|)``; we report
max and mean.  Unlike the artifact (which spreads a request's cost from first to last token) service
counts when served.  Also: accumulated ``max_i W_i(0,t) - min_i W_i(0,t)``; throughput = input +
output tokens served in ``[0, T]`` / T.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from loraplex.scheduler.policies.base import FairnessPolicy, QueuedRequest

Length = int | tuple[int, int]  # fixed, or uniform integer range [lo, hi]


@dataclass(frozen=True)
class Client:
    """One tenant's arrival process between ``start_s`` and ``end_s`` (several may share a name)."""

    name: str
    rpm: float
    input_tokens: Length = 256
    output_tokens: Length = 256
    arrival: str = "uniform"  # "uniform": gap 60/rpm with a random phase; "poisson"
    on_off_s: float = 0.0  # > 0: silent during every odd period of this length
    start_s: float = 0.0
    end_s: float = math.inf


@dataclass(frozen=True)
class Workload:
    name: str
    clients: tuple[Client, ...]
    duration_s: float


@dataclass(frozen=True)
class ServerConfig:
    max_batch_tokens: int = 10_000  # M
    max_batch_size: int | None = None
    decode_step_s: float = 0.04
    prefill_s_per_token: float = 1e-4
    prefill_token_budget: int | None = None
    usage_every: int = 1

    def scaled(self, length_scale: float) -> ServerConfig:
        """Same requests/s capacity for requests ``length_scale`` times as long."""
        return replace(
            self,
            max_batch_tokens=round(self.max_batch_tokens * length_scale),
            decode_step_s=self.decode_step_s / length_scale,
            prefill_s_per_token=self.prefill_s_per_token / length_scale,
        )


def _scale(n: Length, s: float) -> Length:
    return max(1, round(n * s)) if isinstance(n, int) else (_scale(n[0], s), _scale(n[1], s))


def _lengths(c: Client, s: float) -> Client:
    return replace(
        c, input_tokens=_scale(c.input_tokens, s), output_tokens=_scale(c.output_tokens, s)
    )


def paper_workload(name: str, time_scale: float = 1.0, length_scale: float = 1.0) -> Workload:
    """The paper's synthetic suites (rates in req/min, lengths input/output)."""
    on, p = 60.0, {"arrival": "poisson"}
    suites: dict[str, tuple[list[Client], float]] = {
        "overload": ([Client("c1", 90), Client("c2", 180)], 600),
        "proportional": ([Client("c1", 15), Client("c2", 30), Client("c3", 90)], 600),
        "on_off_less": ([Client("c1", 30, on_off_s=on), Client("c2", 120)], 600),
        "on_off_overload": ([Client("c1", 120, on_off_s=on), Client("c2", 180)], 600),
        "poisson_short_long": ([Client("c1", 480, 64, 64, **p), Client("c2", 90, **p)], 600),
        "dist_shift": (  # three 5-minute phases
            [Client("c1", 30, on_off_s=on, end_s=300), Client("c2", 120, end_s=300)]
            + [Client("c1", 60, start_s=300, end_s=600), Client("c2", 60, start_s=300, end_s=600)]
            + [Client("c1", 30, start_s=600), Client("c2", 90, start_s=600)],
            900,
        ),
    }
    if name not in suites:
        raise ValueError(f"unknown workload {name!r}; choose one of {sorted(suites)}")
    clients, duration = suites[name]
    ts, ls = time_scale, length_scale
    scaled = [
        replace(c, on_off_s=c.on_off_s * ts, start_s=c.start_s * ts, end_s=c.end_s * ts)
        for c in clients
    ]
    return Workload(name, tuple(_lengths(c, ls) for c in scaled), duration * ts)


def generate_arrivals(wl: Workload, seed: int = 0) -> list[QueuedRequest]:
    """All requests of ``wl`` arriving in ``[0, duration)``, by time; deterministic for a seed.

    Each runs to exactly ``max_tokens`` output tokens (the paper's benchmark sets ``ignore_eos``)."""
    rng = random.Random(seed)
    out: list[tuple[float, str, int, int]] = []

    def draw(n: Length) -> int:
        return n if isinstance(n, int) else rng.randint(n[0], n[1])

    for c in wl.clients:
        end, gap = min(c.end_s, wl.duration_s), 60.0 / c.rpm
        t = c.start_s + (
            rng.uniform(0, gap) if c.arrival == "uniform" else rng.expovariate(1 / gap)
        )
        while t < end:
            if c.on_off_s <= 0 or int(t // c.on_off_s) % 2 == 0:
                out.append((t, c.name, draw(c.input_tokens), draw(c.output_tokens)))
            t += gap if c.arrival == "uniform" else rng.expovariate(1 / gap)
    out.sort(key=lambda a: a[0])
    return [QueuedRequest(f"r{k}", n, i, o, t) for k, (t, n, i, o) in enumerate(out)]


@dataclass
class SimResult:
    """``service[tenant][k]`` = accumulated service ``W(0, times[k])`` (unweighted)."""

    duration_s: float
    w_p: float
    w_q: float
    arrivals: list[QueuedRequest]
    times: list[float] = field(default_factory=lambda: [0.0])
    service: dict[str, list[float]] = field(default_factory=dict)
    tokens_served: int = 0  # input + output tokens served in [0, duration_s]
    latencies: dict[str, list[float]] = field(default_factory=dict)  # first-token latency

    def service_at(self, tenant: str, t: float) -> float:
        return self.service[tenant][bisect.bisect_right(self.times, t) - 1]

    @property
    def throughput(self) -> float:
        return self.tokens_served / self.duration_s


StepHook = Callable[[float, Mapping[str, float], FairnessPolicy], None]


def simulate(
    policy: FairnessPolicy,
    arrivals: list[QueuedRequest],
    server: ServerConfig,
    duration_s: float,
    on_step: StepHook | None = None,
) -> SimResult:
    """Run until ``duration_s`` (no drain).  ``on_step(t, accumulated_service, policy)`` is called
    after every step: the points where service changes, i.e. every event that matters."""
    m = server.max_batch_tokens
    res = SimResult(duration_s, policy.w_p, policy.w_q, arrivals)
    tenants = sorted({a.tenant for a in arrivals})
    cum = dict.fromkeys(tenants, 0.0)
    res.service = {k: [0.0] for k in tenants}
    res.latencies = {k: [] for k in tenants}
    running: list[list] = []  # [arrival, produced, unreported]
    free, t, i, n = m, 0.0, 0, len(arrivals)
    while True:
        while i < n and arrivals[i].arrival <= t:
            a, i = arrivals[i], i + 1
            policy.enqueue(a, a.arrival)
        if t >= duration_s:
            break
        new_in = 0
        while (req := policy.pick(t)) is not None:
            need = req.input_tokens + req.max_tokens
            if need > m:
                raise ValueError(f"request {req.request_id} needs {need} > M = {m} tokens")
            if need > free or (server.max_batch_size and len(running) >= server.max_batch_size):
                break
            budget = server.prefill_token_budget
            if budget is not None and new_in and new_in + req.input_tokens > budget:
                break
            policy.admit(req, t)
            free, new_in = free - need, new_in + req.input_tokens
            running.append([req, 0, 0])
        if not running:
            wake = [arrivals[i].arrival] if i < n else []
            if (w := policy.next_wakeup(t)) is not None:
                wake.append(w)
            if not wake:
                break
            if min(wake) <= t:
                raise RuntimeError(f"{policy.name}: idle server, nothing admissible at {t}")
            t = min(wake)
            continue
        t += server.decode_step_s + server.prefill_s_per_token * new_in
        still: list[list] = []
        for run in running:
            a, produced = run[0], run[1] + 1
            cum[a.tenant] += policy.w_q
            served = 1
            if produced == 1:
                cum[a.tenant] += policy.w_p * a.input_tokens
                served += a.input_tokens
                res.latencies[a.tenant].append(t - a.arrival)
            if t <= duration_s:
                res.tokens_served += served
            if produced >= a.max_tokens:
                policy.on_finish(a.request_id, produced)
                free += a.input_tokens + a.max_tokens
                continue
            run[1], run[2] = produced, run[2] + 1
            if run[2] >= server.usage_every:
                policy.on_output_tokens(a.tenant, a.request_id, run[2])
                run[2] = 0
            still.append(run)
        running = still
        res.times.append(t)
        for k in tenants:
            res.service[k].append(cum[k])
        if on_step is not None:
            on_step(t, cum, policy)
    return res


def service_difference(
    res: SimResult,
    *,
    window_s: float = 60.0,
    warmup_s: float = 30.0,
    ticks: int = 19,
    weights: Mapping[str, float] | None = None,
) -> list[float]:
    """The paper's per-window service difference (see the module docstring), one value per tick."""
    w = weights or {}
    tenants = sorted(res.service)
    arr_t = [a.arrival for a in res.arrivals]
    values = []
    for k in range(1, ticks + 1):
        lo = k * (res.duration_s - warmup_s) / (ticks + 1)
        hi = min(lo + window_s, res.duration_s)
        r = dict.fromkeys(tenants, 0.0)
        s = {
            j: (res.service_at(j, hi) - res.service_at(j, lo)) / (hi - lo) / w.get(j, 1.0)
            for j in tenants
        }
        for a in res.arrivals[bisect.bisect_left(arr_t, lo) : bisect.bisect_right(arr_t, hi)]:
            cost = res.w_p * a.input_tokens + res.w_q * a.max_tokens
            r[a.tenant] += cost / (hi - lo) / w.get(a.tenant, 1.0)
        top = max(s.values())
        values.append(sum(min(top - s[j], abs(r[j] - s[j])) for j in tenants))
    return values


def accumulated_difference(
    res: SimResult, weights: Mapping[str, float] | None = None
) -> list[float]:
    """``max_i W_i(0,t)/w_i - min_i W_i(0,t)/w_i`` at every step time (``res.times``)."""
    w = weights or {}
    cols = [[v / w.get(k, 1.0) for v in vs] for k, vs in res.service.items()]
    return [max(c) - min(c) for c in zip(*cols, strict=True)]


def summarize(
    res: SimResult, *, time_scale: float = 1.0, weights: Mapping[str, float] | None = None
) -> dict[str, float]:
    """max/avg per-window service difference, max accumulated difference, throughput."""
    diffs = service_difference(
        res, window_s=60.0 * time_scale, warmup_s=30.0 * time_scale, weights=weights
    )
    acc = accumulated_difference(res, weights)
    return {
        "max_diff": max(diffs),
        "avg_diff": sum(diffs) / len(diffs),
        "max_acc_diff": max(acc),
        "throughput": res.throughput,
    }
