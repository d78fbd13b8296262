"""The scheduler's own decision code on a simulated cluster: no NATS, no workers, no model.

One *decision* is what the scheduler service does for a request between its SUBMIT and its
assignment, and back when it ends: ``enqueue``; then ``pick`` -> ``place`` (with prefix affinity:
the holders of the prompt's first block and how much of it each holds) -> ``admit`` ->
``commit`` + ``record`` (the decision's latency, timed on its own); later one usage report and
``on_finish`` + ``release``.  The prompt's prefix keys come hashed in the SUBMIT, as the gateway
sends them; the bench times that hashing on its own (``gateway_keys_us``).

The cluster: ``workers`` colocated workers (``max_num_seqs`` 32, enough KV blocks), each with 16
resident adapters drawn Zipf(1.0) over ``adapters`` (so popular adapters are resident on many
workers).  Traffic: every tenant keeps ``depth`` requests queued (closed loop: an admitted
tenant sends its next one), so all ``tenants`` stay backlogged; each request's adapter is drawn
Zipf(1.0) over the adapters; its prompt (``prompt_tokens``, 128 by default) is the adapter's
system prompt (half) plus tokens of its own (half).  Running requests are held at 90 % of the cluster's batch slots: each cycle finishes
one at random, then makes one decision.  ``fast`` uses the registry's indexed placement and the
heap policy; ``linear`` the scans they replaced (``placement_scan``, ``linear.py``) on the same
state.
"""

from __future__ import annotations

import bisect
import gc
import random
import time
from array import array
from dataclasses import dataclass

from loraplex.kvcache.block_allocator import blocks_for
from loraplex.native import is_compiled
from loraplex.prefix_keys import prefix_keys
from loraplex.protocol import WorkerHeartbeat
from loraplex.scheduler.placement_scan import place_by_scan
from loraplex.scheduler.policies.base import FairnessPolicy, QueuedRequest
from loraplex.scheduler.policies.registry import make_policy, make_reference_policy
from loraplex.scheduler.prefix_affinity import PrefixAffinity
from loraplex.scheduler.workers import WorkerRegistry

MAX_NUM_SEQS = 32
ADAPTER_SLOTS = 16
MAX_TOKENS = 128
BLOCK = 16
KV_BLOCKS = 4096  # per worker, or enough for its 32 requests at the config's prompt length


@dataclass(frozen=True)
class Config:
    workers: int
    tenants: int
    adapters: int = 1000
    depth: int = 2
    seed: int = 0
    # each prompt: the adapter's system prompt (half) + the request's own tokens (half)
    prompt_tokens: int = 128


@dataclass(frozen=True)
class Result:
    impl: str  # "fast" | "linear"
    decisions: int
    seconds: float  # the whole cycle: enqueue + decision + report + finish
    p50_us: float
    p99_us: float  # of the decision alone (pick, place, admit, commit, record)
    # mean µs per decision in each part: "policy" (pick, admit, enqueue with its lift, the usage
    # report, the finish), "placement" (place, commit, release), "prefix" (the prompt's view of the affinity, the record)
    parts: dict[str, float]
    # median µs per decision of policy; policy + placement; all three (cumulative): free of the
    # preemptions a shared box adds to a few decisions (which dominate the means there)
    medians: dict[str, float]
    # the garbage collector during the run: full (generation 2) collections, the longest pause of
    # any collection (ms), and the share of the run's wall time spent collecting
    gc_full: int = 0
    gc_longest_ms: float = 0.0
    gc_share: float = 0.0
    # median µs the gateway spent hashing a prompt's prefix keys (sent in its SUBMIT; not the
    # scheduler's work, so in none of the parts above)
    gateway_keys_us: float = 0.0
    # how the scheduler's modules ran: "compiled" (mypyc, loraplex/native.py) or "interpreted"
    code: str = "interpreted"

    @property
    def per_s(self) -> float:
        return self.decisions / self.seconds if self.seconds > 0 else 0.0

    def rate_of(self, *parts: str) -> float:
        """Decisions/s the named parts alone would allow (1 / their mean time per decision)."""
        us = sum(self.parts[p] for p in parts)
        return 1e6 / us if us > 0 else 0.0

    def median_rate(self, upto: str) -> float:
        """1 / the median time per decision of policy (``upto="policy"``), policy + placement
        (``"placement"``) or all three (``"prefix"``)."""
        us = self.medians[upto]
        return 1e6 / us if us > 0 else 0.0


class Zipf:
    """Ranks 0..n-1 with P(k) proportional to 1 / (k + 1) ** s (inverse CDF by bisection)."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        acc, self.cdf = 0.0, []
        for k in range(n):
            acc += 1.0 / (k + 1) ** s
            self.cdf.append(acc)
        self.rng = rng

    def draw(self) -> int:
        return bisect.bisect_left(self.cdf, self.rng.random() * self.cdf[-1])


class Cluster:
    """Policy-independent state (registry, affinity, running requests, random streams) that the
    fast and linear runs start from alike (built twice from the same seed)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.zipf = Zipf(cfg.adapters, 1.0, self.rng)
        self.registry = WorkerRegistry(3.0, 0.25, seed=cfg.seed)
        kv_blocks = max(KV_BLOCKS, MAX_NUM_SEQS * blocks_for(cfg.prompt_tokens + MAX_TOKENS, BLOCK))
        for i in range(cfg.workers):
            resident: set[str] = set()
            while len(resident) < ADAPTER_SLOTS:
                resident.add(f"ad{self.zipf.draw()}")
            hb = WorkerHeartbeat(
                f"w{i:05d}",
                "both",
                kv_blocks,
                kv_blocks,
                BLOCK,
                0,
                0,
                MAX_NUM_SEQS,
                sorted(resident),
            )
            self.registry.heartbeat(hb, 0.0)
        self.affinity = PrefixAffinity()  # the service's: each LRU capped at its worker's blocks
        self.next_id = 0
        self.running: list[tuple[str, str, str]] = []  # (request id, tenant, worker)
        self.slots = int(0.9 * cfg.workers * MAX_NUM_SEQS)

    def draw(self) -> tuple[str, str]:
        """The next request's id and Zipf-drawn adapter (the traffic, not the scheduler's work)."""
        rid = f"r{self.next_id}"
        self.next_id += 1
        return rid, f"ad{self.zipf.draw()}"

    def request(self, tenant: str, now: float) -> QueuedRequest:
        rid, adapter = self.draw()
        return QueuedRequest(rid, tenant, self.cfg.prompt_tokens, MAX_TOKENS, now, adapter)

    def fill(self, policy: FairnessPolicy) -> None:
        for t in range(self.cfg.tenants):
            for _ in range(self.cfg.depth):
                policy.enqueue(self.request(f"t{t}", 0.0), 0.0)

    def prompt(self, q: QueuedRequest) -> list[int]:
        """The adapter's system prompt, then the request's own tokens (what its SUBMIT
        carried)."""
        a = int((q.adapter or "ad0")[2:])
        k = int(q.request_id[1:])
        system_tokens = self.cfg.prompt_tokens // 2
        system = list(range(100_000 + 100 * a, 100_000 + 100 * a + system_tokens))
        own = self.cfg.prompt_tokens - system_tokens
        return system + [(k * 7919 + i * 104_729) % 32_000 for i in range(own)]


def _run(
    cluster: Cluster, policy: FairnessPolicy, linear: bool, budget_s: float, max_decisions: int
) -> tuple[Result, list[str]]:
    """Cycles until ``budget_s`` or ``max_decisions``: finish one running request (at 90 % of the
    slots), make one decision, enqueue the admitted tenant's next request.  Returns the result
    and the ids decided, in order."""
    reg, aff, rng, running = cluster.registry, cluster.affinity, cluster.rng, cluster.running
    place = (lambda *a: place_by_scan(reg, *a)) if linear else reg.place
    # The bench's own records are flat arrays of ints: as lists of tuples they would be 200,000
    # objects more for the garbage collector to walk, inflating the pauses it reports.
    lat = array("q")
    order: list[str] = []
    clock = time.perf_counter_ns
    spent = {"policy": 0, "placement": 0, "prefix": 0}  # ns per part, summed over the run
    each = array("q")  # ns per decision: policy, placement, prefix (three per decision)
    fin_policy = fin_place = 0
    now = 1.0
    pauses: list[tuple[int, float]] = []  # (generation, seconds) of each collection
    gateway = array("q")  # ns hashing each prompt's keys (the gateway's work)
    began: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            began.append(time.perf_counter())
        elif began:
            pauses.append((info["generation"], time.perf_counter() - began.pop()))

    gc.callbacks.append(on_gc)
    start = time.perf_counter()
    deadline = start + budget_s
    while len(order) < max_decisions and (len(order) & 15 or time.perf_counter() < deadline):
        now += 1e-4
        if len(running) >= cluster.slots:  # a request ends: one usage report, then finished
            i = rng.randrange(len(running))
            rid, tenant, wid = running[i]
            running[i] = running[-1]
            running.pop()
            t = clock()
            policy.on_output_tokens(tenant, rid, MAX_TOKENS // 2)
            policy.on_finish(rid, MAX_TOKENS // 2)
            t1 = clock()
            reg.release(wid, rid)
            fin_policy, fin_place = t1 - t, clock() - t1
        else:
            fin_policy = fin_place = 0
        q = policy.peek()
        prompt = cluster.prompt(q) if q is not None else []  # the service has it in the SUBMIT
        tk = clock()
        keys = prefix_keys(q.adapter if q is not None else None, prompt)  # the gateway's part
        gateway.append(clock() - tk)
        t0 = clock()
        q = policy.pick(now)
        if q is None:
            break
        t1 = clock()
        cached = aff.cached_blocks(q.adapter, prompt, keys)
        t2 = clock()
        placement = place(q.adapter, len(prompt), len(prompt) + q.max_tokens, cached)
        if placement is None:
            gc.callbacks.remove(on_gc)
            raise RuntimeError("the simulated cluster is full: it keeps 10 % of its slots free")
        t3 = clock()
        policy.admit(q, now)
        t4 = clock()
        wid = placement.prefill
        reg.commit(wid, q.request_id, len(prompt) + q.max_tokens)
        t5 = clock()
        blocks = reg.workers[wid].hb.total_blocks  # the service's _assign: the keys, the LRU's cap
        aff.record(wid, cached.keys(), blocks)
        t6 = clock()
        lat.append(t6 - t0)
        order.append(q.request_id)
        running.append((q.request_id, q.tenant, wid))
        # The service drops its view of the prompt here, but keeps the prompt (in the request's
        # SUBMIT) until the request ends: freeing it is not this decision's work.
        del cached
        rid, adapter = cluster.draw()  # the tenant's next SUBMIT (closed loop: stays backlogged)
        t6e = clock()
        policy.enqueue(
            QueuedRequest(rid, q.tenant, cluster.cfg.prompt_tokens, MAX_TOKENS, now, adapter), now
        )  # the service builds the policy's request from the SUBMIT, then enqueues it
        t7 = clock()
        pol = (t1 - t0) + (t4 - t3) + (t7 - t6e) + fin_policy
        plc = (t3 - t2) + (t5 - t4) + fin_place
        pre = (t2 - t1) + (t6 - t5)
        spent["policy"] += pol
        spent["placement"] += plc
        spent["prefix"] += pre
        each.extend((pol, plc, pre))
    seconds = time.perf_counter() - start
    gc.callbacks.remove(on_gc)
    lat = sorted(lat)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] / 1000 if lat else 0.0

    n = max(1, len(order))
    parts = {k: v / n / 1000 for k, v in spent.items()}

    def median_us(k: int) -> float:  # the median per-decision time of the first k parts
        if not each:
            return 0.0
        sums = sorted(sum(each[i : i + k]) for i in range(0, len(each), 3))
        return sums[len(sums) // 2] / 1000

    medians = {"policy": median_us(1), "placement": median_us(2), "prefix": median_us(3)}
    impl = "linear" if linear else "fast"
    gc_stats = {
        "gc_full": sum(1 for g, _ in pauses if g == 2),
        "gc_longest_ms": max((d for _, d in pauses), default=0.0) * 1000,
        "gc_share": sum(d for _, d in pauses) / seconds if seconds > 0 else 0.0,
    }
    gateway = sorted(gateway)
    gc_stats["gateway_keys_us"] = gateway[len(gateway) // 2] / 1000 if gateway else 0.0
    code = "compiled" if is_compiled("loraplex.scheduler.placement") else "interpreted"
    result = Result(
        impl, len(order), seconds, pct(0.5), pct(0.99), parts, medians, **gc_stats, code=code
    )
    return result, order


def _warmed(cfg: Config) -> tuple[Cluster, FairnessPolicy]:
    """The cluster and its heap policy, every tenant backlogged, the cluster at 90 %."""
    cluster = Cluster(cfg)
    policy = make_policy("vtc", predict_output=True)
    cluster.fill(policy)
    _run(cluster, policy, False, 1e9, cluster.slots)  # warm-up
    return cluster, policy


def measure(
    cfg: Config, fast_s: float, linear_s: float, max_decisions: int = 200_000
) -> tuple[Result, Result, float]:
    """Both implementations from the same warmed-up state: the cluster built twice, the linear
    policy restored from the warmed heap policy's snapshot (enqueueing 100,000 tenants through its O(n)
    lift would itself take minutes).  The linear run's decisions must be the fast run's first
    ones (same policy decisions; placement does not feed back into the policy).
    Returns (fast, linear, seconds spent building the state)."""
    t0 = time.perf_counter()
    cluster, fast_policy = _warmed(cfg)
    build = time.perf_counter() - t0
    fast, fast_order = _run(cluster, fast_policy, False, fast_s, max_decisions)
    del cluster, fast_policy
    # The same state again (the build is deterministic): rebuilt rather than copied, because
    # the compiled core's classes do not pickle, and a copy held during the fast run would
    # double what the garbage collector walks.
    twin, warm_policy = _warmed(cfg)
    linear_policy = make_reference_policy("vtc", predict_output=True)
    linear_policy.restore(warm_policy.snapshot())
    del warm_policy
    linear, linear_order = _run(twin, linear_policy, True, linear_s, len(fast_order))
    if fast_order[: len(linear_order)] != linear_order:
        raise AssertionError("the heap policy and the linear scan decided differently")
    return fast, linear, build
