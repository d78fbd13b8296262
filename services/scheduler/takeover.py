"""What a new leader inherits from the scheduler it replaces, and how it takes it over.

At takeover the leader has restored the fairness counters with the charges of the requests that
were running (``counters.py``) and loaded the ledger of placed requests (``ledger.py``).  It commits
the ledger's capacity on the workers at once (so nothing is over-placed on them), then waits for
the gateways: each resubmits its unfinished requests with the same id when it hears the new epoch.

* a resubmitted request with a ledger entry is *claimed*: it becomes in flight on the workers the
  ledger names, charged as before (or charged now, if the counters were saved before its
  admission); liveness (``recovery.py``) takes it from there, as for any placed request.  Its
  token log (to migrate it) is the ids its gateway received, joined to the token reports heard
  since the takeover (``TokenLog.tail``): together they are whole unless the gateway lags;
* one without an entry was never placed: it is queued again (by the service), unless tokens of it
  already reached its client, which means it finished (or was lost) under the old leader;
* entries nobody claims within ``claim_s`` belong to requests whose gateway is gone (or that
  finished): their workers are told to cancel them, and their charges are settled.  Before that,
  a worker's heartbeat that no longer lists an entry's request frees its capacity (it finished in
  the failover gap), so the gap does not last the whole claim window.
"""

from __future__ import annotations

import dataclasses
import logging

from loraplex.protocol import CancelRequest, RequestProgress, SubmitRequest, WorkerHeartbeat
from loraplex.scheduler.ledger import LedgerEntry
from loraplex.scheduler.migration import TokenLog
from loraplex.scheduler.placement import Placement
from loraplex.scheduler.policies.base import FairnessPolicy, QueuedRequest
from loraplex.scheduler.recovery import InFlight
from loraplex.scheduler.workers import WorkerRegistry

log = logging.getLogger(__name__)


class Takeover:
    """The unclaimed part of a predecessor's state: ``pending`` ledger entries and ``unsettled``
    running charges restored with the counters.  Owned by the service; inert until ``begin``."""

    def __init__(self, registry: WorkerRegistry, policy: FairnessPolicy, claim_s: float) -> None:
        self.registry = registry
        self.policy = policy
        self.claim_s = claim_s
        self.pending: dict[str, LedgerEntry] = {}
        self.tails: dict[str, TokenLog] = {}  # token reports heard for pending entries
        self.unsettled: set[str] = set()
        self.deadline: float | None = None

    def begin(self, entries: dict[str, LedgerEntry], running: set[str], now: float) -> None:
        self.pending = dict(entries)
        self.tails = {}
        self.unsettled = set(running)
        self.deadline = now + self.claim_s
        for e in entries.values():
            self._commit(e)
        log.info(
            "taking over: %d placed requests in the ledger, %d running charges",
            len(entries),
            len(running),
        )

    def claim(self, sub: SubmitRequest, now: float) -> InFlight | None:
        """The in-flight job of a resubmitted request the ledger places, else None."""
        e = self.pending.pop(sub.request_id, None)
        if e is None:
            return None
        tail = self.tails.pop(sub.request_id, TokenLog.tail())
        completion = max(sub.tokens_received, tail.end)
        kept = dataclasses.replace(sub, received_token_ids=None)  # not sent on in assignments
        job = InFlight(
            kept,
            Placement(e.prefill, e.decode),
            attempt=e.attempt,
            tokens_sent=completion > 0,
            completion_tokens=completion,
        )
        received = sub.received_token_ids
        if received is not None and len(received) != sub.tokens_received:
            received = None  # not the ids of what the gateway counts: unusable
        job.tokens.adopt(received, tail)
        job.workers = {e.prefill} | ({e.decode} if e.decode else set())
        job.assigned_at = now
        if sub.request_id in self.unsettled:
            self.unsettled.discard(sub.request_id)
        else:  # admitted after the counters were last saved: charge its admission now
            q = QueuedRequest(
                sub.request_id,
                sub.tenant,
                len(sub.prompt_token_ids),
                sub.sampling.max_tokens,
                now,
                sub.adapter,
            )
            self.policy.enqueue(q, now)
            self.policy.admit(q, now)
        return job

    def settle(self, request_id: str) -> None:
        """A request that will be queued afresh: drop a running charge the snapshot kept for it
        (it was admitted, then the old leader died before placing it)."""
        if request_id in self.unsettled:
            self.unsettled.discard(request_id)
            self.policy.cancel(request_id)

    def on_progress(self, p: RequestProgress) -> bool:
        """A worker's report on an unclaimed request: charge it; True when it was one."""
        e = self.pending.get(p.request_id)
        if e is None:
            return False
        charged = p.request_id in self.unsettled
        if p.event == "tokens":
            self.tails.setdefault(p.request_id, TokenLog.tail()).hear(p)
        if p.event == "tokens" and charged:
            self.policy.on_output_tokens(e.tenant, p.request_id, p.new_tokens)
        elif p.event in ("finished", "error"):
            del self.pending[p.request_id]
            self.tails.pop(p.request_id, None)
            self._release(e)
            if charged:
                self.unsettled.discard(p.request_id)
                self.policy.on_finish(p.request_id, p.completion_tokens)
        return True

    def on_heartbeat(self, hb: WorkerHeartbeat) -> None:
        """Free the capacity of unclaimed entries the worker no longer holds (they finished in the
        failover gap, whose reports nobody read); the entry stays, for a late claim."""
        if not self.pending or hb.active is None:
            return
        held = set(hb.active)
        for e in self.pending.values():
            if hb.worker_id in (e.prefill, e.decode) and e.request_id not in held:
                self.registry.release(hb.worker_id, e.request_id)

    def cancel(self, request_id: str) -> list[str]:
        """A cancel for an unclaimed request: the workers to forward it to."""
        e = self.pending.pop(request_id, None)
        self.tails.pop(request_id, None)
        if e is None:
            return []
        self._release(e)
        self.settle(request_id)
        return [w for w in (e.prefill, e.decode) if w]

    def expire(self, now: float) -> list[tuple[str, CancelRequest]]:
        """After the claim window: settle what nobody claimed; the cancels to send."""
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        cancels: list[tuple[str, CancelRequest]] = []
        for rid in list(self.pending):
            for wid in self.cancel(rid):
                cancels.append((wid, CancelRequest(rid, "no gateway claimed it after failover")))
        for rid in list(self.unsettled):
            self.settle(rid)
        if cancels:
            log.info("takeover: placed requests not claimed; %d cancels sent", len(cancels))
        return cancels

    def _commit(self, e: LedgerEntry) -> None:
        adapter = e.adapter or None
        share = e.prompt_tokens if e.decode else e.total_tokens
        self.registry.commit(e.prefill, e.request_id, share, adapter)
        if e.decode:
            self.registry.commit(e.decode, e.request_id, e.total_tokens, adapter)

    def _release(self, e: LedgerEntry) -> None:
        for wid in (e.prefill, e.decode):
            if wid:
                self.registry.release(wid, e.request_id)
