"""The fairness-policy contract the scheduler service drives (pure Python: no I/O, no torch).

Over 300 lines on purpose: the contract's long call-order documentation and the base class that
every policy shares (per-tenant queues, charging) belong together.

Who calls what (``now`` is the scheduler's clock in seconds; any monotone float works):

1. ``enqueue(req, now)``      the gateway's submit arrived; ``req`` joins its tenant's FIFO queue.
2. ``pick(now)``/``peek()``   the request the policy wants admitted next, or ``None``.  No side
                              effects.  The scheduler calls ``admit`` for it *only* when a worker has
                              room (KV blocks, batch slot), so capacity bounds admission and the policy
                              decides the order.  If the picked request does not fit, the scheduler
                              waits (strict order, as in the paper) rather than skipping ahead.
3. ``admit(req, now)``        pops ``req`` from its queue and charges its input cost (plus, with
                              length prediction, its predicted output cost); it is now *running*.
4. ``on_output_tokens(tenant, request_id, n)``  a decode worker produced ``n`` more tokens.
5. ``on_finish(request_id, output_tokens)``     the request ended with ``output_tokens`` tokens in
                              total; the final correction.  After it the tenant has been charged
                              exactly ``(w_p * input_tokens + w_q * output_tokens) / weight``.
6. ``cancel(request_id)``     client went away: a queued request is removed; a running one is settled
                              at the tokens reported so far and further reports for it are ignored.

Queries: ``backlogged()`` (tenants with a queued request), ``queue_len(tenant)`` (for the service's
own per-tenant 429 limit; the policy never rejects), ``counters()`` and ``next_wakeup(now)``.
Persistence: ``snapshot()`` returns a JSON-serialisable dict (counters, queues, running requests,
policy-specific state) and ``restore(state)`` loads one into a policy built with the same name; the
``queues`` and ``running`` keys may be dropped by a scheduler that persists counters only.

Invariants every policy keeps:
* a request id is in at most one place: queued, running, or forgotten (finished/cancelled);
* within a tenant, requests leave the queue in ``enqueue`` order when the scheduler admits what
  ``pick`` returns (FIFO within a tenant);
* every counter increment is divided by the tenant's weight (default 1.0);
* a report for an unknown (finished, cancelled, never admitted) request id charges nothing.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
@mypyc_attr(acyclic=True)  # compiled: not tracked by the garbage collector (it holds no objects)
class QueuedRequest:
    """One request as the policy sees it.  Set by the scheduler from the gateway's submit message.

    ``input_tokens``: prompt length after tokenization (what prefill will process).
    ``max_tokens``: the generation cap; output may end earlier (EOS/stop).
    ``arrival``: when the scheduler received it (seconds, scheduler clock).
    ``adapter``: LoRA adapter name, ``None`` for the base model (informational for policies).
    """

    request_id: str
    tenant: str
    input_tokens: int
    max_tokens: int
    arrival: float
    adapter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QueuedRequest:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(slots=True)
@mypyc_attr(acyclic=True)  # compiled: not tracked by the garbage collector (it holds no objects)
class _Running:
    """Charging state of an admitted request (token units, not cost units)."""

    tenant: str
    input_tokens: int
    predicted: float  # output tokens charged up front at admission (0 without prediction)
    reported: int = 0  # output tokens reported by workers so far
    charged: float = (
        0.0  # output tokens charged so far; always max(predicted, reported) until finish
    )


class FairnessPolicy(ABC):
    """Base class: per-tenant FIFO queues, running-request accounting, counters, snapshots.

    Subclasses implement ``pick``; they may override the ``_on_enqueue``/``_on_admit`` hooks,
    ``_predict``/``_observe`` (length prediction) and ``_extra_state``/``_load_extra_state``.  A
    policy that indexes its backlogged tenants (VTC/LCF/FCFS: ``backlog_heap.py``) hears of every
    change through ``_head_changed``/``_counter_changed`` and rebuilds on ``_reindex``, so its
    ``pick`` need not scan (keep ``pick`` O(log n): it runs once per decision).

    ``counters()`` are the policy's virtual counters: for VTC/LCF the scheduling state; for FCFS and
    RPM they are the weighted service charged so far (observability only, never used to order).
    """

    name: ClassVar[str] = "base"
    # It orders by service shared fairly: a tenant over its share of the batch may be preempted
    # for one below it (``preemption.py``).  FCFS and RPM serve in arrival order instead.
    shares_fairly: ClassVar[bool] = False

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        w_p: float = 1.0,
        w_q: float = 2.0,
    ) -> None:
        if w_p < 0 or w_q < 0:
            raise ValueError("w_p and w_q must be >= 0")
        self.weights: dict[str, float] = {}
        self.set_weights(weights or {})
        self.w_p = float(w_p)
        self.w_q = float(w_q)
        self._queues: dict[str, deque[tuple[int, QueuedRequest]]] = {}  # non-empty queues only
        self._queued: dict[str, QueuedRequest] = {}  # request_id -> queued request
        self._running: dict[str, _Running] = {}
        self._counters: dict[str, float] = {}
        self._seq = 0  # enqueue order; ties and FIFO use it
        self._last_left: str | None = None  # tenant whose queue most recently became empty
        self.clock = 0.0  # latest ``now`` seen; ``peek()`` picks at this time

    # -- configuration ---------------------------------------------------------------------------
    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Use these weights from now on (the tenants file changed): service already charged
        stays charged, later charges are divided by the new weight."""
        for tenant, w in weights.items():
            if not (w > 0 and math.isfinite(w)):
                raise ValueError(f"weight of tenant {tenant!r} must be a positive number, got {w}")
        self.weights = dict(weights)

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.0)

    def options(self) -> dict[str, Any]:
        """Constructor options (besides weights) as JSON; recorded in snapshots."""
        return {"w_p": self.w_p, "w_q": self.w_q}

    # -- the contract ----------------------------------------------------------------------------
    def enqueue(self, req: QueuedRequest, now: float) -> None:
        """Append ``req`` to its tenant's queue.  Raises ``ValueError`` on a duplicate id."""
        if req.request_id in self._queued or req.request_id in self._running:
            raise ValueError(f"request {req.request_id!r} is already queued or running")
        if now > self.clock:  # _tick inlined (hot path)
            self.clock = now
        self._counters.setdefault(req.tenant, 0.0)
        was_empty = req.tenant not in self._queues
        self._on_enqueue(req, now, was_empty)
        self._queues.setdefault(req.tenant, deque()).append((self._seq, req))
        self._seq += 1
        self._queued[req.request_id] = req
        if was_empty:
            self._head_changed(req.tenant)

    @abstractmethod
    def pick(self, now: float) -> QueuedRequest | None:
        """The request to admit next at time ``now`` (``None``: nothing, or nothing allowed now)."""

    def peek(self) -> QueuedRequest | None:
        """``pick`` at the latest time this policy has seen (``self.clock``)."""
        return self.pick(self.clock)

    def admit(self, req: QueuedRequest, now: float) -> None:
        """Move ``req`` from the queue to running and charge ``w_p*input (+ w_q*predicted)``.

        Normally ``req`` is what ``pick`` returned; admitting another queued request is allowed
        (the scheduler's choice) but then the policy's order is not what is served.
        """
        if req.request_id not in self._queued:
            raise KeyError(f"request {req.request_id!r} is not queued")
        if now > self.clock:  # _tick inlined (hot path)
            self.clock = now
        self._remove_queued(req)
        predicted = min(float(req.max_tokens), max(0.0, self._predict(req)))
        run = _Running(req.tenant, req.input_tokens, predicted, charged=predicted)
        self._running[req.request_id] = run
        self._charge(req.tenant, self.w_p * req.input_tokens + self.w_q * predicted)
        self._on_admit(req, now)

    def on_output_tokens(self, tenant: str, request_id: str, n: int) -> float:
        """Charge ``n`` newly produced tokens; returns the counter increment (0 when ignored).

        With a prediction charged at admission, only tokens beyond it are charged here.
        """
        run = self._running.get(request_id)
        if run is None or n <= 0:
            return 0.0
        if run.tenant != tenant:
            raise ValueError(f"request {request_id!r} belongs to {run.tenant!r}, not {tenant!r}")
        run.reported += n
        extra = max(run.predicted, run.reported) - run.charged
        run.charged += extra
        return self._charge(tenant, self.w_q * extra)

    def on_finish(self, request_id: str, output_tokens: int) -> float:
        """Settle a running request at ``output_tokens`` (refund or charge the difference)."""
        run = self._running.pop(request_id, None)
        if run is None:
            return 0.0
        self._observe(run.tenant, output_tokens)
        return self._charge(run.tenant, self.w_q * (output_tokens - run.charged))

    def cancel(self, request_id: str) -> bool:
        """Drop a queued request, or settle a running one at its reported tokens.  False: unknown."""
        req = self._queued.get(request_id)
        if req is not None:
            self._remove_queued(req)
            return True
        run = self._running.pop(request_id, None)
        if run is None:
            return False
        self._charge(run.tenant, self.w_q * (run.reported - run.charged))
        return True

    def queued(self) -> list[QueuedRequest]:
        """Every queued request, in enqueue order (a resubmission may have arrived earlier)."""
        return list(self._queued.values())

    def backlogged(self) -> list[str]:
        """Tenants with at least one queued request, sorted by name."""
        return sorted(self._queues)

    def queue_len(self, tenant: str) -> int:
        q = self._queues.get(tenant)
        return len(q) if q else 0

    def __len__(self) -> int:
        return len(self._queued)

    def num_running(self) -> int:
        return len(self._running)

    def counters(self) -> dict[str, float]:
        return dict(self._counters)

    def next_wakeup(self, now: float) -> float | None:
        """When ``pick`` may change with no other event (rate limits); ``None``: never."""
        return None

    # -- persistence -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state.  Round trip: ``p2.restore(p.snapshot())`` behaves like ``p``."""
        return {
            "version": SNAPSHOT_VERSION,
            "policy": self.name,
            "options": self.options(),
            "weights": dict(self.weights),
            "counters": dict(self._counters),
            "seq": self._seq,
            "clock": self.clock,
            "last_left": self._last_left,
            "queues": {t: [[s, r.to_dict()] for s, r in q] for t, q in self._queues.items()},
            "running": {rid: asdict(r) for rid, r in self._running.items()},
            "extra": self._extra_state(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace this policy's state by ``state``; constructor options and weights are kept."""
        if state.get("version") != SNAPSHOT_VERSION or state.get("policy") != self.name:
            raise ValueError(f"snapshot is {state.get('policy')!r} v{state.get('version')}")
        self._counters = {t: float(c) for t, c in state["counters"].items()}
        self._seq = int(state.get("seq", 0))
        self.clock = float(state.get("clock", 0.0))
        self._last_left = state.get("last_left")
        self._queues, self._queued = {}, {}
        for tenant, entries in state.get("queues", {}).items():
            q = deque([(int(s), QueuedRequest.from_dict(r)) for s, r in entries])
            if q:
                self._queues[tenant] = q
                self._queued.update((r.request_id, r) for _, r in q)
                self._counters.setdefault(tenant, 0.0)
        self._running = {rid: _Running(**r) for rid, r in state.get("running", {}).items()}
        self._load_extra_state(state.get("extra", {}))
        self._reindex()

    # -- hooks and helpers -----------------------------------------------------------------------
    def _on_enqueue(self, req: QueuedRequest, now: float, was_empty: bool) -> None:
        """Called before ``req`` joins the queue; ``was_empty``: the tenant had nothing queued."""
        return None

    def _on_admit(self, req: QueuedRequest, now: float) -> None:
        """Called after ``req`` was admitted and charged."""
        return None

    def _predict(self, req: QueuedRequest) -> float:
        """Output tokens to charge at admission (capped at ``max_tokens``); 0 = charge as produced."""
        return 0.0

    def _observe(self, tenant: str, output_tokens: int) -> None:
        """A request of ``tenant`` finished with ``output_tokens`` (feeds a length predictor)."""
        return None

    def _head_changed(self, tenant: str) -> None:
        """``tenant``'s head request changed, or its queue became empty or non-empty (an index of
        backlogged tenants, as VTC's and FCFS's heaps, hears of it here)."""
        return None

    def _counter_changed(self, tenant: str) -> None:
        """``tenant``'s counter changed (it may or may not be backlogged)."""
        return None

    def _reindex(self) -> None:
        """The queues and counters were replaced wholesale (``restore``): rebuild any index."""
        return None

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        return None

    def _charge(self, tenant: str, cost: float) -> float:
        if not cost:  # a report within the prediction, a finish that matches it: no re-index
            self._counters.setdefault(tenant, 0.0)
            return 0.0
        w = self.weights.get(tenant)  # weight() inlined: three charges per request
        inc = cost if w is None else cost / w
        self._counters[tenant] = self._counters.get(tenant, 0.0) + inc
        self._counter_changed(tenant)
        return inc

    def _tick(self, now: float) -> None:
        self.clock = max(self.clock, now)

    def _remove_queued(self, req: QueuedRequest) -> None:
        q = self._queues[req.tenant]
        head = q[0][1].request_id == req.request_id
        if head:
            q.popleft()
        else:
            q.remove(next(e for e in q if e[1].request_id == req.request_id))
        del self._queued[req.request_id]
        if not q:
            del self._queues[req.tenant]
            self._last_left = req.tenant
        if head:
            self._head_changed(req.tenant)
