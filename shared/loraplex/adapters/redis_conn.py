"""How the adapter registry talks to Redis: the library's retrying client (plain or Sentinel), and
connection failures turned into the typed ``StoreUnavailableError`` once those retries are spent."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from loraplex.adapters.errors import StoreUnavailableError
from loraplex.redis_connect import connect_redis as _connect

P = ParamSpec("P")
R = TypeVar("R")


def connect_redis(url: str) -> aioredis.Redis:
    """A lazy client that reconnects with backoff for ``LORAPLEX_REDIS_RETRY_S`` per command: it
    rides out a Redis restart or a Sentinel failover (``redis+sentinel://`` URLs)."""
    return _connect(url)


def unavailable_as_typed(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorator: Redis connection failures surface as StoreUnavailableError (503 at the edge)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as e:
            # the cause (host, port) stays in the chain for logs, out of the client's message
            raise StoreUnavailableError("adapter store: Redis is unavailable, try again") from e

    return wrapper
