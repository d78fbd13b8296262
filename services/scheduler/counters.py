"""The fairness policy's counters in Redis, so that they survive a scheduler restart or failover.

The leader saves the policy's snapshot whenever it changed (checked every liveness tick) and at
shutdown, through the lease's ``Fence`` when there is one (a deposed leader cannot overwrite its
successor's counters).  A new scheduler on the same Redis restores the counters of the same policy,
and the charges of the requests that were running (``restore`` returns their ids): a request
adopted after a failover is settled against what it was already charged, so its tokens are counted
once.  Queued requests are not in the snapshot (their gateways resubmit them); requests nobody
adopts are settled by ``takeover.py``.  At most one tick of charges (0.25 s) can be lost.
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from loraplex.scheduler.leader import Fence, LeaseLost
from loraplex.scheduler.policies.base import FairnessPolicy

log = logging.getLogger(__name__)
COUNTERS_SUFFIX = ":scheduler:counters"


class CounterStore:
    """The policy's snapshot under ``<redis_prefix>:scheduler:counters``."""

    def __init__(
        self, redis: aioredis.Redis, redis_prefix: str, fence: Fence | None = None
    ) -> None:
        self.key = redis_prefix + COUNTERS_SUFFIX
        self.redis = redis
        self.fence = fence

    async def restore(self, policy: FairnessPolicy) -> set[str]:
        """Load the counters (and running charges) into ``policy``; the running request ids."""
        try:
            raw = await self.redis.get(self.key)
        except RedisError as e:
            log.warning("cannot read counters from Redis: %s", e)
            return set()
        if not raw:
            return set()
        state = json.loads(raw)
        if state.get("policy") != policy.name:
            return set()
        state["queues"] = {}  # queued requests come back from their gateways
        # Times are monotonic-clock readings of the old process: meaningless here.
        state["clock"] = 0.0
        if policy.name == "rpm":
            state["extra"] = {}
        policy.restore(state)
        log.info("restored fairness counters: %s", policy.counters())
        return set(state.get("running", {}))

    async def save(self, policy: FairnessPolicy) -> bool:
        """Write the policy's snapshot; False when Redis could not be reached.  ``LeaseLost``
        propagates (this scheduler no longer leads)."""
        data = json.dumps(policy.snapshot())
        try:
            if self.fence is not None:
                await self.fence.set(self.key, data)
            else:
                await self.redis.set(self.key, data)
        except LeaseLost:
            raise
        except RedisError as e:
            log.warning("cannot save counters to Redis: %s", e)
            return False
        return True
