"""The ledger of placed requests in Redis, so that a new leader knows who runs what.

The leader writes a request's placement (``LedgerEntry``) *before* it publishes the assignment
(write-ahead, fenced by its lease: ``leader.Fence``), and drops the entries of requests that left
its tables (finished, failed, cancelled) in batches every liveness tick.  A new leader loads the
ledger at takeover: every request a worker may be running is in it.  An entry that outlives its
request (the batch of drops was not written yet) is harmless: the new leader adopts an entry only
when the request's gateway resubmits it (``takeover.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from redis.exceptions import RedisError

from loraplex.scheduler.leader import Fence

log = logging.getLogger(__name__)
LEDGER_SUFFIX = ":scheduler:inflight"


@dataclass(frozen=True)
class LedgerEntry:
    """Where one admitted request was placed, and what it commits there."""

    request_id: str
    tenant: str
    prefill: str
    decode: str  # "" when colocated
    attempt: int
    prompt_tokens: int
    total_tokens: int
    adapter: str = ""  # "" for the base model; absent in entries of older leaders

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> LedgerEntry:
        d = json.loads(raw)
        return cls(
            request_id=str(d["request_id"]),
            tenant=str(d["tenant"]),
            prefill=str(d["prefill"]),
            decode=str(d["decode"]),
            attempt=int(d["attempt"]),
            prompt_tokens=int(d["prompt_tokens"]),
            total_tokens=int(d["total_tokens"]),
            adapter=str(d.get("adapter") or ""),
        )


class Ledger:
    """``<prefix>:scheduler:inflight``: request id -> ``LedgerEntry`` (JSON)."""

    def __init__(self, fence: Fence, redis_prefix: str) -> None:
        self.fence = fence
        self.key = redis_prefix + LEDGER_SUFFIX
        self._recorded: set[str] = set()  # ids this leader wrote and has not dropped yet

    async def record(self, entries: list[LedgerEntry]) -> bool:
        """Write ``entries`` (a dispatch round's) in one fenced write; False when Redis could not
        be reached (the leader goes on: nobody else can take the lease then either).
        ``LeaseLost`` propagates: the caller stops."""
        try:
            await self.fence.hash_update(self.key, {e.request_id: e.to_json() for e in entries})
        except RedisError as e:
            log.warning("%d ledger entries not written (Redis: %s)", len(entries), e)
            return False
        self._recorded.update(e.request_id for e in entries)
        return True

    def adopt(self, request_ids: Iterable[str]) -> None:
        """Entries a predecessor wrote that this leader now answers for (dropped by ``sync``)."""
        self._recorded.update(request_ids)

    async def sync(self, live: set[str]) -> None:
        """Drop the entries of requests no longer in ``live`` (admitted and not done)."""
        gone = [rid for rid in self._recorded if rid not in live]
        if not gone:
            return
        try:
            await self.fence.hash_update(self.key, {}, gone)
        except RedisError as e:
            log.debug("ledger drops not written (Redis: %s)", e)
            return
        self._recorded.difference_update(gone)

    async def load(self) -> dict[str, LedgerEntry]:
        """Every entry (a malformed one is logged and skipped)."""
        raw = await self.fence.lease.redis.hgetall(self.key)
        entries: dict[str, LedgerEntry] = {}
        for k, v in raw.items():
            try:
                e = LedgerEntry.from_json(v)
            except (ValueError, KeyError, TypeError) as err:
                log.warning("skipping malformed ledger entry %r: %s", k, err)
                continue
            entries[e.request_id] = e
        return entries
