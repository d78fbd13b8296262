"""How the adapter registry talks to Redis: the library's retrying client (plain or Sentinel), and
connection failures turned into the typed ``StoreUnavailableError`` once those retries are spent."""

from __future__ import annotations

import redis.asyncio as aioredis

from loraplex.adapters.errors import StoreUnavailableError
from loraplex.redis_connect import connect_redis as _connect
from loraplex.redis_connect import unavailable_as


def connect_redis(url: str) -> aioredis.Redis:
    """A lazy client that reconnects with backoff for ``LORAPLEX_REDIS_RETRY_S`` per command: it
    rides out a Redis restart or a Sentinel failover (``redis+sentinel://`` URLs)."""
    return _connect(url)


# Redis connection failures surface as StoreUnavailableError (503 at the edge).
unavailable_as_typed = unavailable_as(
    lambda: StoreUnavailableError("adapter store: Redis is unavailable, try again")
)
