"""The fairness policy's counters in Redis, so that they survive a scheduler restart.

The service saves the policy's snapshot whenever it changed (checked every liveness tick) and at
shutdown; a new scheduler on the same Redis restores the counters of the same policy.  Queued and
running requests do not survive a restart; counters do.
"""

from __future__ import annotations

import json
import logging

from loraplex.scheduler.policies.base import FairnessPolicy

log = logging.getLogger(__name__)
COUNTERS_SUFFIX = ":scheduler:counters"


class CounterStore:
    """The policy's snapshot under ``<redis_prefix>:scheduler:counters``."""

    def __init__(self, redis_url: str, redis_prefix: str) -> None:
        import redis.asyncio as aioredis

        self.key = redis_prefix + COUNTERS_SUFFIX
        self.redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2.0)

    async def restore(self, policy: FairnessPolicy) -> None:
        try:
            raw = await self.redis.get(self.key)
        except Exception as e:
            log.warning("cannot read counters from Redis: %s", e)
            return
        if raw:
            state = json.loads(raw)
            if state.get("policy") == policy.name:
                state["queues"], state["running"] = {}, {}  # requests do not survive; counters do
                # Times are monotonic-clock readings of the old process: meaningless here.
                state["clock"] = 0.0
                if policy.name == "rpm":
                    state["extra"] = {}
                policy.restore(state)
                log.info("restored fairness counters: %s", policy.counters())

    async def save(self, policy: FairnessPolicy) -> bool:
        """Write the policy's snapshot; False when Redis could not be reached."""
        try:
            await self.redis.set(self.key, json.dumps(policy.snapshot()))
        except Exception as e:
            log.warning("cannot save counters to Redis: %s", e)
            return False
        return True

    async def close(self) -> None:
        await self.redis.aclose()
