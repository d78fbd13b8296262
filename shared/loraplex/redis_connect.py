"""The one place a Redis client is made: a plain ``redis://`` server or a Sentinel-watched primary.

``redis+sentinel://[user:password@]host:port,host:port/master-name[/db]`` names the Sentinels
and the master they watch; the client asks them for the primary on every (re)connect, so after a
failover it writes to the promoted replica.  Every command that fails on the connection (refused,
reset, timed out, or a primary demoted to read-only) is retried with backoff until
``LORAPLEX_REDIS_RETRY_S`` has passed since it began: long enough to ride out a Sentinel failover
or a restart, bounded so that a Redis that stays down surfaces as an error, not a hang.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from loraplex import env

T = TypeVar("T")
P = ParamSpec("P")
SENTINEL_SCHEME = "redis+sentinel://"
DEFAULT_SENTINEL_PORT = 26379


class RedisURLError(ValueError):
    """A Redis URL that cannot be used (bad scheme, host, port, master name or db)."""


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def _port(text: str, url: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise RedisURLError(f"bad port {text!r} in Redis URL {url!r}")
    return int(text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[user:password@]host[:port],host[:port]/master[/db]``."""
    if not url.startswith(SENTINEL_SCHEME):
        raise RedisURLError(f"not a {SENTINEL_SCHEME} URL: {url!r}")
    rest = url[len(SENTINEL_SCHEME) :]
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, pw = userinfo.partition(":")
        username, password = (user or None), (pw or None)
    sentinels = []
    for hostport in netloc.split(","):
        host, _, port = hostport.strip().rpartition(":") if ":" in hostport else (hostport, "", "")
        host = host.strip()
        if not host:
            raise RedisURLError(f"a Sentinel without a host in Redis URL {url!r}")
        sentinels.append((host, _port(port, url) if port else DEFAULT_SENTINEL_PORT))
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise RedisURLError(f"Redis URL {url!r} needs /master-name[/db] after the Sentinels")
    if len(parts) == 2 and not parts[1].isdigit():
        raise RedisURLError(f"bad db {parts[1]!r} in Redis URL {url!r}")
    db = int(parts[1]) if len(parts) == 2 else 0
    return SentinelTarget(tuple(sentinels), parts[0], db, username, password)


def check_redis_url(url: str) -> None:
    """Raise ``RedisURLError`` for a URL ``connect_redis`` could not use (settings check it)."""
    if url.startswith(SENTINEL_SCHEME):
        parse_sentinel_url(url)
    elif not url.startswith(("redis://", "rediss://", "unix://")):
        raise RedisURLError(
            f"Redis URL {url!r} must start with redis://, rediss://, unix:// or {SENTINEL_SCHEME}"
        )


# The deadline of the outermost retrying call in this task: redis-py retries a command and,
# inside it, the reconnect, with the same policy; they share one budget instead of multiplying.
_deadline: ContextVar[float | None] = ContextVar("loraplex_redis_retry_deadline", default=None)


class DeadlineRetry(Retry):
    """Retry connection errors with capped exponential backoff until ``budget_s`` has passed."""

    def __init__(self, budget_s: float, cap_s: float = 0.5, base_s: float = 0.05) -> None:
        super().__init__(ExponentialBackoff(cap=cap_s, base=base_s), retries=-1)
        self.budget_s = budget_s

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        outer = _deadline.get()
        deadline = outer if outer is not None else time.monotonic() + self.budget_s
        token = _deadline.set(deadline) if outer is None else None
        try:
            failures = 0
            while True:
                try:
                    return await do()
                except self._supported_errors as error:
                    retryable = (self._is_retryable is None or self._is_retryable(error)) and (
                        is_retryable is None or is_retryable(error)
                    )
                    failures += 1
                    await (fail(error, failures) if with_failure_count else fail(error))
                    left = deadline - time.monotonic()
                    if not retryable or left <= 0:
                        raise
                    await asyncio.sleep(min(self._backoff.compute(failures), left))
        finally:
            if token is not None:
                _deadline.reset(token)


class FailoverConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks the Sentinels for the primary on every reconnect.
    redis-py's own reconnects a dropped connection inside a command to the address it had (the
    dead primary) until the retries run out; this one follows the promotion."""

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        # the command's retry loop retries (and asks the Sentinels again); not the socket alone
        await super().connect_check_health(check_health, retry_socket_connect=False)


def connect_redis(url: str, retry_s: float | None = None, **kwargs: Any) -> aioredis.Redis:
    """A lazy client for ``url`` (``redis://`` or ``redis+sentinel://``) whose commands retry
    connection failures for ``retry_s`` (default ``LORAPLEX_REDIS_RETRY_S``); ``kwargs`` go to
    the client (``decode_responses``, ``socket_timeout``, ...)."""
    check_redis_url(url)
    budget = env.REDIS_RETRY_S.get() if retry_s is None else retry_s
    opts: dict[str, Any] = {
        "retry": DeadlineRetry(budget),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "socket_connect_timeout": 2.0,
        "socket_timeout": 30.0,
        "health_check_interval": 15,
    }
    opts.update(kwargs)
    if not url.startswith(SENTINEL_SCHEME):
        return aioredis.Redis.from_url(url, **opts)
    target = parse_sentinel_url(url)
    sentinel = Sentinel(
        list(target.sentinels),
        # a Sentinel that does not answer quickly is skipped for the next one
        sentinel_kwargs={"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
    )
    return sentinel.master_for(
        target.master,
        db=target.db,
        username=target.username,
        password=target.password,
        connection_class=FailoverConnection,
        **opts,
    )


def unavailable_as(
    error: Callable[[], Exception],
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorator: a Redis connection failure (once the client's retries are spent) surfaces as
    ``error()``, a typed error the edge turns into a 503.  The cause (host, port) stays in the
    chain for logs, out of the client's message."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await fn(*args, **kwargs)
            except (RedisConnectionError, RedisTimeoutError) as e:
                raise error() from e

        return wrapper

    return decorate
