"""One scheduler replica's part in leader election: standby until it takes the lease, then leader
until it loses it.

A standby polls the lease every ``POLL_S``; the leader renews it every quarter of its life and
announces itself (``LeaderAnnounce`` on ``loraplex.sched.leader``) after each renewal, so gateways
and workers that reconnect learn the epoch.  The leader steps down (``on_deposed``; the process
exits and its supervisor starts it again as a standby) when a renewal finds the lease taken, a
fenced write is refused, or it hears a newer epoch announced.  While Redis cannot be reached it
keeps leading: no standby can take the lease then either, and if one can (Redis reachable from it
only), its announcement deposes this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from loraplex.bus import Bus
from loraplex.protocol import LeaderAnnounce, Subjects
from loraplex.scheduler.counters import CounterStore
from loraplex.scheduler.leader import Fence, LeaderLease, LeaseLost, scheduler_redis
from loraplex.scheduler.ledger import Ledger
from loraplex.timeouts import cancel_requested

log = logging.getLogger(__name__)
POLL_S = 0.2  # how often a standby tries the lease: part of the failover gap


class Replica:
    """Owns the Redis client, the lease, its fence, the ledger and the counter store."""

    def __init__(
        self,
        bus: Bus,
        redis_url: str,
        redis_prefix: str,
        scheduler_id: str,
        lease_s: float,
        on_elected: Callable[[int], Awaitable[None]],
        on_deposed: Callable[[str], Awaitable[None]],
    ) -> None:
        self.bus = bus
        self.redis = scheduler_redis(redis_url)
        self.lease = LeaderLease(self.redis, redis_prefix, scheduler_id, lease_s)
        self.fence = Fence(self.lease)
        self.ledger = Ledger(self.fence, redis_prefix)
        self.counters = CounterStore(self.redis, redis_prefix, self.fence)
        self.lease_s = lease_s
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.leading = False
        self.newest_epoch = 0  # the newest epoch heard of (announced, or our own)
        self._task: asyncio.Task | None = None
        self._unreachable_logged = False

    @property
    def epoch(self) -> int:
        return self.lease.epoch if self.leading else 0

    async def start(self) -> None:
        """Listen to announcements and try the lease once (a lone scheduler leads at once)."""
        await self.bus.subscribe(Subjects.LEADER, self._on_announce, LeaderAnnounce)
        await self._try()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.leading:
            await self.lease.release()
        await self.redis.aclose()

    async def deposed(self, why: str) -> None:
        """Stop leading (a fenced write was refused, the lease is gone, a newer leader spoke)."""
        if not self.leading:
            return
        self.leading = False
        log.warning("stepping down: %s", why)
        await self.on_deposed(why)

    async def announce(self) -> None:
        if not self.leading:
            return
        try:
            await self.bus.publish(
                Subjects.LEADER, LeaderAnnounce(self.lease.scheduler_id, self.lease.epoch)
            )
        except Exception as e:  # NATS reconnecting: the next renewal announces again
            log.debug("leader announcement not published: %s", e)

    async def _try(self) -> None:
        if not await self.lease.try_acquire(self.newest_epoch):
            return
        self.leading = True
        self.newest_epoch = max(self.newest_epoch, self.lease.epoch)
        log.info("leading with epoch %d", self.lease.epoch)
        try:
            await self.on_elected(self.lease.epoch)
        except (RedisError, LeaseLost) as e:
            # The predecessor's state could not be read: leading without it could run a
            # request twice.  Give the lease back and try again.
            log.warning("takeover failed (%s); back to standby", e)
            self.leading = False
            await self.lease.release()
            return
        await self.announce()

    async def _run(self) -> None:
        last_renewed = time.monotonic()
        while not cancel_requested():  # a cancel redis-py swallowed ends it too
            if not self.leading:
                await asyncio.sleep(POLL_S)
                await self._try()
                last_renewed = time.monotonic()
                continue
            await asyncio.sleep(self.lease_s / 4)
            try:
                if await self.lease.renew():
                    last_renewed, self._unreachable_logged = time.monotonic(), False
                elif (
                    time.monotonic() - last_renewed > self.lease_s and not self._unreachable_logged
                ):
                    self._unreachable_logged = True
                    log.warning("Redis unreachable for longer than the lease: still leading")
            except LeaseLost as e:
                await self.deposed(str(e))
                continue
            await self.announce()

    async def _on_announce(self, a: LeaderAnnounce) -> None:
        self.newest_epoch = max(self.newest_epoch, a.epoch)
        if self.leading and a.epoch > self.lease.epoch:
            await self.deposed(f"scheduler {a.scheduler_id} leads with epoch {a.epoch}")
