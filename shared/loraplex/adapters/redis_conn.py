"""How the adapter registry talks to Redis: a retrying client, and connection failures turned
into the typed ``StoreUnavailableError`` once those retries are spent."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from loraplex.adapters.errors import StoreUnavailableError

P = ParamSpec("P")
R = TypeVar("R")


def connect_redis(url: str) -> aioredis.Redis:
    """A lazy client that reconnects with backoff (rides out a ~3 s Redis restart per call)."""
    return aioredis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=8),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_connect_timeout=2.0,
        socket_timeout=30.0,
        health_check_interval=15,
    )


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
