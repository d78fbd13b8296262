"""Per-tenant requests-per-minute limit, FCFS otherwise (the paper's "RPM" baseline).

A tenant that already had ``limit`` requests *admitted* in the trailing window ``(now - window_s,
now]`` is not eligible; ``pick`` returns the earliest-enqueued head request among eligible tenants.

Differences from the paper's ``lshare`` queue, and the work-conserving choice:

* Over-limit requests are *held* in the queue (not aborted on arrival): rejecting with 429 is the
  scheduler service's business, driven by ``queue_len``.  A held request becomes eligible as soon
  as the window slides; ``next_wakeup(now)`` says when.
* ``work_conserving=False`` (default, like the paper and gateway rate limiters): when every
  backlogged tenant is over its limit, ``pick`` returns ``None`` even if a worker is idle, so
  capacity can go unused.  ``work_conserving=True`` instead falls back to plain FCFS among the
  over-limit tenants in that case (the limit then only orders, it never idles the server).

Invariant: with ``work_conserving=False`` no tenant is ever admitted more than its limit within any
window of length ``window_s``.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Mapping
from typing import Any, ClassVar

from .base import FairnessPolicy, QueuedRequest


class RPMPolicy(FairnessPolicy):
    name: ClassVar[str] = "rpm"

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        w_p: float = 1.0,
        w_q: float = 2.0,
        limit: int = 30,
        limits: Mapping[str, int] | None = None,
        window_s: float = 60.0,
        work_conserving: bool = False,
    ) -> None:
        super().__init__(weights, w_p=w_p, w_q=w_q)
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit = int(limit)
        self.limits = {t: int(v) for t, v in (limits or {}).items()}
        self.window_s = float(window_s)
        self.work_conserving = work_conserving
        # tenant -> ascending expiry times (admission time + window_s); an admission at ``x`` counts
        # while ``now < x + window_s``.  Comparing expiries (no subtraction) keeps it float-exact.
        self._expiry: dict[str, list[float]] = {}

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "limit": self.limit,
            "limits": dict(self.limits),
            "window_s": self.window_s,
            "work_conserving": self.work_conserving,
        }

    def limit_of(self, tenant: str) -> int:
        return self.limits.get(tenant, self.limit)

    def recent_admissions(self, tenant: str, now: float) -> int:
        """Admissions of ``tenant`` in ``(now - window_s, now]``."""
        exp = self._expiry.get(tenant, [])
        return len(exp) - bisect_right(exp, now)

    def pick(self, now: float) -> QueuedRequest | None:
        self._tick(now)
        best: tuple[int, QueuedRequest] | None = None
        fallback: tuple[int, QueuedRequest] | None = None
        for tenant, q in self._queues.items():
            head = q[0]
            if self.recent_admissions(tenant, now) < self.limit_of(tenant):
                if best is None or head[0] < best[0]:
                    best = head
            elif fallback is None or head[0] < fallback[0]:
                fallback = head
        if best is None and self.work_conserving:
            best = fallback
        return None if best is None else best[1]

    def next_wakeup(self, now: float) -> float | None:
        if self.work_conserving or not self._queues:
            return None
        wake: float | None = None
        for tenant in self._queues:
            lim = self.limit_of(tenant)
            if self.recent_admissions(tenant, now) < lim:
                return None  # someone is eligible right now
            # eligible once all but lim - 1 of the in-window admissions have expired
            exp = self._expiry[tenant]
            t = exp[len(exp) - lim]
            wake = t if wake is None else min(wake, t)
        return wake

    def _on_admit(self, req: QueuedRequest, now: float) -> None:
        exp = self._expiry.setdefault(req.tenant, [])
        insort(exp, now + self.window_s)
        drop = bisect_right(exp, now)
        if drop:
            del exp[:drop]

    def _extra_state(self) -> dict[str, Any]:
        return {"expiry": {t: list(v) for t, v in self._expiry.items()}}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        self._expiry = {t: [float(x) for x in v] for t, v in extra.get("expiry", {}).items()}
