"""Which scheduler leads: a lease in Redis with a fencing epoch.

Every scheduler replica runs a ``LeaderLease``.  The lease is one key,
``<prefix>:scheduler:lease`` = ``"<scheduler id>:<epoch>"`` with a time to live; ``SET NX`` takes
it, and each acquisition increments ``<prefix>:scheduler:epoch``, so an epoch names one term of one
leader.  The leader renews it (compare-and-extend in Lua) every third of its life; a standby tries
to take it every ``poll_s``.  Writes the leader makes for its term (counters, the ledger of
in-flight requests) go through ``fenced_*`` scripts that check the lease still holds its token, so
a deposed leader can never overwrite its successor's state; assignments carry the epoch, and
workers ignore an epoch older than one they have seen.

A renewal that finds the key gone (it expired while Redis was unreachable, or Redis restarted
empty) takes it back with the same epoch only if no one else has led since (the epoch key is not
above ours); otherwise the lease is lost and the scheduler steps down.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from loraplex.redis_connect import connect_redis

log = logging.getLogger(__name__)

LEASE_SUFFIX = ":scheduler:lease"
EPOCH_SUFFIX = ":scheduler:epoch"

# KEYS: lease, epoch.  ARGV: scheduler id, ttl ms, lowest epoch allowed (the newest one heard of
# minus nothing: a Redis that lost its epoch key must not hand out an old epoch again).
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if e <= floor then e = floor + 1; redis.call('SET', KEYS[2], e) end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. e, 'PX', ARGV[2])
return e
"""
# KEYS: lease, epoch.  ARGV: token, ttl ms, epoch.  1: still ours; 0: lost.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1 end
if v then return 0 end
local e = tonumber(redis.call('GET', KEYS[2]) or '0')
if e > tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def scheduler_redis(url: str, timeout_s: float = 0.5) -> aioredis.Redis:
    """The scheduler's Redis client: short timeouts, since a lease call must finish well within
    the lease's life (a slow Redis is treated as an unreachable one), and lost connections are
    retried for ``timeout_s`` only.  ``url`` may name Sentinels (``redis+sentinel://``)."""
    return connect_redis(
        url, retry_s=timeout_s, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )


class LeaseLost(Exception):
    """Another scheduler holds the lease now (or has led since ours expired)."""


class LeaderLease:
    """The lease of one scheduler replica.  ``epoch`` is 0 until it leads."""

    def __init__(
        self, redis: aioredis.Redis, redis_prefix: str, scheduler_id: str, ttl_s: float
    ) -> None:
        self.redis = redis
        self.key = redis_prefix + LEASE_SUFFIX
        self.epoch_key = redis_prefix + EPOCH_SUFFIX
        self.scheduler_id = scheduler_id
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.epoch = 0
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def token(self) -> str:
        return f"{self.scheduler_id}:{self.epoch}"

    async def try_acquire(self, newest_seen: int = 0) -> bool:
        """Take the lease if it is free; True when this replica leads now.  Redis errors: False."""
        try:
            e = int(await self._acquire(keys=[self.key, self.epoch_key], args=[
                self.scheduler_id, self.ttl_ms, newest_seen,
            ]))  # fmt: skip
        except RedisError as err:
            log.debug("lease not acquired (Redis: %s)", err)
            return False
        if e:
            self.epoch = e
        return bool(e)

    async def renew(self) -> bool:
        """Extend the lease; False when Redis could not be reached (the caller decides how long
        that may last).  Raises ``LeaseLost`` when another scheduler holds it."""
        try:
            ok = int(await self._renew(keys=[self.key, self.epoch_key], args=[
                self.token, self.ttl_ms, self.epoch,
            ]))  # fmt: skip
        except RedisError as err:
            log.warning("lease not renewed (Redis: %s)", err)
            return False
        if not ok:
            raise LeaseLost(f"scheduler {self.scheduler_id} lost the lease of epoch {self.epoch}")
        return True

    async def release(self) -> None:
        """Give the lease up at a clean stop, so a standby takes over at once."""
        if not self.epoch:
            return
        try:
            await self._release(keys=[self.key], args=[self.token])
        except RedisError as err:
            log.warning("lease not released (Redis: %s)", err)

    async def holder(self) -> str | None:
        """The token of the current holder (for logs and tests)."""
        raw = await self.redis.get(self.key)
        return raw.decode() if raw else None


# Every fenced script starts with this check.  KEYS[1], KEYS[2]: lease, epoch; ARGV[1..3]: token,
# ttl ms, epoch.  A lease key that is gone (it expired on a replica Redis promoted during a
# failover that outlasted the lease) is taken back, as _RENEW does, when no one has led since.
_HOLDS = """
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then
  if v then return 0 end
  local e = tonumber(redis.call('GET', KEYS[2]) or '0')
  if e > tonumber(ARGV[3]) then return 0 end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3])
end
"""
# KEYS: lease, epoch, target.  ARGV: token, ttl, epoch, value.
_FENCED_SET = (
    _HOLDS
    + """
redis.call('SET', KEYS[3], ARGV[4])
return 1
"""
)
# KEYS: lease, epoch, hash.  ARGV: token, ttl, epoch, then field, value pairs to set, then '--',
# then fields to drop.
_FENCED_HASH = (
    _HOLDS
    + """
local i = 4
while i <= #ARGV and ARGV[i] ~= '--' do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2
end
for j = i + 1, #ARGV do redis.call('HDEL', KEYS[3], ARGV[j]) end
return 1
"""
)


class Fence:
    """Writes a leader makes for its term, refused by Redis once the lease is not its own."""

    def __init__(self, lease: LeaderLease) -> None:
        self.lease = lease
        self._set = lease.redis.register_script(_FENCED_SET)
        self._hash = lease.redis.register_script(_FENCED_HASH)

    def _keys(self, target: str) -> list[str]:
        return [self.lease.key, self.lease.epoch_key, target]

    def _fence_args(self) -> list[str | bytes | int]:
        return [self.lease.token, self.lease.ttl_ms, self.lease.epoch]

    async def set(self, key: str, value: str | bytes) -> None:
        """Raises ``LeaseLost`` when the lease is not ours, ``RedisError`` when unreachable."""
        if not int(await self._set(keys=self._keys(key), args=[*self._fence_args(), value])):
            raise LeaseLost(f"fenced write to {key} refused: epoch {self.lease.epoch} is over")

    async def hash_update(
        self, key: str, put: dict[str, str | bytes], drop: list[str] | tuple[str, ...] = ()
    ) -> None:
        """HSET ``put`` and HDEL ``drop`` in one fenced script (same errors as ``set``)."""
        args: list[str | bytes | int] = self._fence_args()
        for k, v in put.items():
            args += [k, v]
        args += ["--", *drop]
        if not int(await self._hash(keys=self._keys(key), args=args)):
            raise LeaseLost(f"fenced write to {key} refused: epoch {self.lease.epoch} is over")
