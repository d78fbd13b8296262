"""The gateway's side of scheduler failover: SUBMIT that rides out a leader change, and the
resubmission of unfinished requests to a new leader.

Schedulers run as replicas (docs/architecture.md, Scheduler replicas); the leader announces its
lease epoch on ``loraplex.sched.leader``.  A new epoch means a new leader, which knows nothing of
the requests queued in the old one: the gateway sends every request it has open (accepted or still
being submitted, no final token yet) again, with the same id, ``resubmit=True``, the number of
tokens it already streamed and their ids (when it got them all), from which the new leader can
migrate the request if its worker dies.  The scheduler dedupes by id, so sending one twice is
harmless.

``submit`` retries a SUBMIT that got no answer (the leader died holding it) and, while a leader
was heard recently, one that found no scheduler (the failover gap), until ``timeout_s`` in all;
with no leader ever heard it fails at once, as before.

A leader that dies when no standby can take over (Redis down: the lease lives there) leaves the
requests it had queued waiting for nobody.  Once no leader has been heard for ``leaderless_s``
(a failover takes about 2 s), those that have no token yet fail with a 503 instead of waiting
for the gateway's request timeout; requests already streaming go on, since their workers need no
scheduler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from loraplex.bus import Bus, BusTimeoutError, NoRespondersError
from loraplex.gateway.streams import StreamRouter
from loraplex.protocol import LeaderAnnounce, RequestError, Subjects, SubmitReply, SubmitRequest
from loraplex.timeouts import cancel_requested

log = logging.getLogger(__name__)
ATTEMPT_S = 1.0  # one SUBMIT attempt; a dead leader's is retried after this
RETRY_GAP_S = 0.1  # between attempts while no scheduler answers
PARALLEL = 32  # resubmissions in flight at once
LEADERLESS_S = 10.0  # no leader heard this long: the requests a dead one queued fail (503)
WATCH_S = 1.0  # how often that is checked
LEADERLESS_MESSAGE = "no scheduler is running: the scheduler that queued the request stopped, try again later"  # fmt: skip


def _no_ids() -> list[int] | None:
    return None


@dataclass
class OpenRequest:
    """A request the gateway has not seen finish: its SUBMIT, how to read what its client got
    so far (the count, and the ids or None when a delta went missing), and the epoch of the leader
    that accepted it (0 until accepted)."""

    submit: SubmitRequest
    tokens: Callable[[], int] = lambda: 0
    token_ids: Callable[[], list[int] | None] = _no_ids
    epoch: int = 0
    opened_at: float = field(default_factory=time.monotonic)


class Resubmitter:
    """Open requests (id -> ``OpenRequest``) and the newest leader epoch heard."""

    def __init__(
        self, bus: Bus, router: StreamRouter, timeout_s: float, leaderless_s: float = LEADERLESS_S
    ) -> None:
        self.bus = bus
        self.router = router
        self.timeout_s = timeout_s
        self.leaderless_s = leaderless_s
        self.open: dict[str, OpenRequest] = {}
        self.epoch = 0
        self.leader_heard_at: float | None = None  # monotonic
        self.resubmitted = 0  # requests sent again (metrics, tests)
        self._subscribed = False
        self._tasks: set[asyncio.Task] = set()

    async def ensure_subscribed(self) -> None:
        """Listen to leader announcements (from the first request on)."""
        if self._subscribed:
            return
        self._subscribed = True
        try:
            await self.bus.subscribe(Subjects.LEADER, self._on_leader, LeaderAnnounce)
        except Exception as e:  # NATS down: the SUBMIT fails clearly; subscribe next time
            self._subscribed = False
            log.warning("cannot listen to scheduler leader announcements: %s", e)
            return
        self._spawn(self._watch_leader())

    def track(self, sub: SubmitRequest) -> None:
        self.open[sub.request_id] = OpenRequest(sub)

    def attach(
        self,
        request_id: str,
        tokens: Callable[[], int],
        epoch: int = 0,
        token_ids: Callable[[], list[int] | None] = _no_ids,
    ) -> None:
        """Once accepted (by the leader of ``epoch``): how to read the tokens streamed so far."""
        entry = self.open.get(request_id)
        if entry is not None:
            entry.tokens, entry.token_ids, entry.epoch = tokens, token_ids, epoch

    def forget(self, request_id: str) -> None:
        self.open.pop(request_id, None)

    def _leader_recent(self) -> bool:
        t = self.leader_heard_at
        return t is not None and time.monotonic() - t < self.timeout_s

    async def submit(self, msg: SubmitRequest) -> SubmitReply:
        """SUBMIT ``msg`` until a scheduler answers.  Raises ``NoRespondersError`` (no leader,
        none heard lately) or ``BusTimeoutError`` (none answered within ``timeout_s``)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusTimeoutError(f"no reply on {Subjects.SUBMIT} within {self.timeout_s:g}s")
            try:
                return await self.bus.request(
                    Subjects.SUBMIT, msg, SubmitReply, min(ATTEMPT_S, left)
                )
            except NoRespondersError:
                if not self._leader_recent():
                    raise
                await asyncio.sleep(min(RETRY_GAP_S, max(0.0, deadline - time.monotonic())))
            except BusTimeoutError:
                continue  # the same id again: the scheduler dedupes it

    async def _on_leader(self, a: LeaderAnnounce) -> None:
        self.leader_heard_at = time.monotonic()
        if a.epoch <= self.epoch:
            return
        self.epoch = a.epoch
        # Not those this leader accepted itself (a gateway's first announcement comes after
        # its first requests were accepted by the leader it announces).
        stale = [rid for rid, entry in self.open.items() if entry.epoch < a.epoch]
        if stale:
            log.info("scheduler leader %s (epoch %d): resubmitting %d requests",
                     a.scheduler_id, a.epoch, len(stale))  # fmt: skip
            self._spawn(self._resubmit_all(stale))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_leader(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(WATCH_S)
            try:
                await self.fail_leaderless(time.monotonic())
            except Exception:  # never let the watch die: the next tick tries again
                log.exception("failing the requests of a stopped scheduler")

    async def fail_leaderless(self, now: float) -> list[str]:
        """With no leader heard for ``leaderless_s``: fail the requests a leader accepted that
        have no token yet (503), and return their ids."""
        heard = self.leader_heard_at
        if heard is None or now - heard < self.leaderless_s:
            return []
        stranded = [rid for rid, e in self.open.items() if e.epoch and e.tokens() == 0]
        if stranded:
            log.warning("no scheduler leader for %.0f s: failing %d queued requests",
                        now - heard, len(stranded))  # fmt: skip
        for rid in stranded:
            self.forget(rid)
            await self.router.dispatch(RequestError(rid, 503, LEADERLESS_MESSAGE))
        return stranded

    async def _resubmit_all(self, request_ids: list[str]) -> None:
        gate = asyncio.Semaphore(PARALLEL)

        async def one(rid: str) -> None:
            async with gate:
                await self._resubmit(rid)

        await asyncio.gather(*(one(rid) for rid in request_ids))

    async def _resubmit(self, request_id: str) -> None:
        entry = self.open.get(request_id)
        if entry is None:
            return  # finished meanwhile
        count, ids = entry.tokens(), entry.token_ids()
        msg = dataclasses.replace(
            entry.submit,
            resubmit=True,
            tokens_received=count,
            received_token_ids=ids if ids is not None and len(ids) == count > 0 else None,
            waited_s=time.monotonic() - entry.opened_at,
        )
        try:
            reply = await self.submit(msg)
        except Exception as e:  # no leader answered: the next announcement tries again
            log.warning("resubmission of %s failed: %s", request_id, e)
            return
        self.resubmitted += 1
        if reply.accepted and request_id in self.open:
            self.open[request_id].epoch = reply.epoch
        if not reply.accepted and request_id in self.open:
            await self.router.dispatch(RequestError(request_id, reply.code, reply.message))
