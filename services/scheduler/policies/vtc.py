"""Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models", OSDI'24).

Algorithm 2 of the paper, with the weighted variant and (optionally) Algorithm 3's length
prediction:

* one counter ``c[t]`` per tenant, never reset;
* cost of a request = ``w_p * input_tokens + w_q * output_tokens`` (defaults 1 and 2); the input part
  is charged at admission, ``w_q`` per output token as usage reports arrive; every increment is
  divided by the tenant's weight, so counters are *normalised* service;
* ``pick`` returns the head (FIFO) of the backlogged tenant with the lowest counter; ties go to the
  tenant whose head request was enqueued first (deterministic);
* counter lift, when a tenant with an empty queue gets a request:
  ``c[u] = max(c[u], min{c[k] : k backlogged})`` if some tenant is backlogged, otherwise
  ``c[u] = max(c[u], c[l])`` with ``l`` the tenant that last left the queue (if any).  So idle time
  is never banked as credit.  (The artifact skips the second case; the paper has it.)

Invariant (Lemma 4.3): the counters of backlogged tenants stay within ``U`` of each other,
``U = max(w_p * L_input, w_q * M)`` over weight, when ``M`` tokens fit in the running batch; hence
any two continuously backlogged tenants' services differ by at most ``2U`` (Thm 4.4).

Length prediction (``predict_output=True``): at admission charge ``w_p*in + w_q*pred`` where
``pred`` is the tenant's exponential moving average of finished output lengths,
``pred <- (1 - alpha) * pred + alpha * actual`` (``alpha=0.2`` is the artifact's ``(4*pred+actual)/5``),
capped at the request's ``max_tokens``; a tenant without history is predicted ``initial_prediction``
tokens, or ``max_tokens`` when that is ``None``; its first finished request sets ``pred = actual``.  Usage reports are reconciled with the prediction
by charging only the tokens *beyond* it: after ``k`` reported tokens the request has been charged
``w_q * max(pred, k)``.  ``on_finish(actual)`` then charges ``w_q * (actual - max(pred, k))``, which
is a refund when the request ended below its prediction.  Net charge per request is exactly
``w_p*in + w_q*actual`` in every mode; prediction only moves *when* it is charged.  Prediction
tightens the average discrepancy, not the worst-case bound.

Cost: backlogged tenants sit in a lazy min-heap keyed by ``(counter, head's enqueue seq)``
(``backlog_heap.py``); ``pick`` and the lift's minimum read its top, so a decision costs
O(log n) in the backlogged tenants instead of a scan.  The decisions are exactly the scan's
(``linear.py`` keeps the scan as the reference; ``tests/scheduler/test_heap_equivalence.py``
replays random workloads through both).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .backlog_heap import BacklogHeap, Key
from .base import FairnessPolicy, QueuedRequest


class VTCPolicy(FairnessPolicy):
    """Weighted VTC.  ``lift=False`` gives LCF (see ``lcf.py``)."""

    name: ClassVar[str] = "vtc"
    lift: ClassVar[bool] = True
    shares_fairly: ClassVar[bool] = True

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        w_p: float = 1.0,
        w_q: float = 2.0,
        predict_output: bool = False,
        ema_alpha: float = 0.2,
        initial_prediction: float | None = None,
    ) -> None:
        super().__init__(weights, w_p=w_p, w_q=w_q)
        if not 0.0 < ema_alpha <= 1.0:
            raise ValueError("ema_alpha must be in (0, 1]")
        self.predict_output = predict_output
        self.ema_alpha = ema_alpha
        self.initial_prediction = initial_prediction
        self._ema: dict[str, float] = {}  # tenant -> predicted output length
        self._backlog = BacklogHeap(self._key, lambda: self._queues)

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "predict_output": self.predict_output,
            "ema_alpha": self.ema_alpha,
            "initial_prediction": self.initial_prediction,
        }

    def pick(self, now: float) -> QueuedRequest | None:
        self._tick(now)
        tenant = self._backlog.top()
        return None if tenant is None else self._queues[tenant][0][1]

    def prediction(self, tenant: str) -> float | None:
        """The tenant's current predicted output length (``None`` before its first finish)."""
        return self._ema.get(tenant)

    def _on_enqueue(self, req: QueuedRequest, now: float, was_empty: bool) -> None:
        if not (self.lift and was_empty):
            return
        u = req.tenant
        lowest = self._backlog.top()  # u is not backlogged yet: the others' lowest counter
        if lowest is not None:
            self._counters[u] = max(self._counters[u], self._counters[lowest])
        elif self._last_left is not None:
            self._counters[u] = max(self._counters[u], self._counters[self._last_left])

    # -- the backlog heap ------------------------------------------------------------------------
    def _key(self, tenant: str) -> Key | None:
        q = self._queues.get(tenant)
        return None if q is None else (self._counters[tenant], q[0][0])

    def _head_changed(self, tenant: str) -> None:
        self._backlog.touch(tenant)

    def _counter_changed(self, tenant: str) -> None:
        self._backlog.touch(tenant)

    def _reindex(self) -> None:
        self._backlog.rebuild()

    def _predict(self, req: QueuedRequest) -> float:
        if not self.predict_output:
            return 0.0
        pred = self._ema.get(req.tenant, self.initial_prediction)
        return float(req.max_tokens) if pred is None else pred

    def _observe(self, tenant: str, output_tokens: int) -> None:
        if not self.predict_output:
            return
        prev = self._ema.get(tenant)
        a = self.ema_alpha
        self._ema[tenant] = (
            float(output_tokens) if prev is None else (1 - a) * prev + a * output_tokens
        )

    def _extra_state(self) -> dict[str, Any]:
        return {"ema": dict(self._ema)}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        self._ema = {t: float(v) for t, v in extra.get("ema", {}).items()}
