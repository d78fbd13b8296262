"""The gateway's last good answer to "which adapter does model name X mean for tenant T", kept to
ride out an adapter store (Redis) that cannot be reached.

Every request that names an adapter asks the store (the tenant's own adapter of that name, else
the public one; served or not).  While Redis is down each ask waits out the client's retries
(``LORAPLEX_REDIS_RETRY_S``) and fails, although the workers still hold the adapter's weights: a
Redis restart would fail every adapter request in the meantime.  So the gateway remembers, per
(tenant, name), the adapter id of the last answer that served, for ``stale_s``; when the store
fails, a remembered answer serves instead of a 503, and for ``BREAKER_S`` after a failure it serves
at once, without asking (nothing to learn from a store that just failed).  Only what that tenant
itself was answered is remembered, so no tenant can reach another's adapter through it; an
adapter unloaded or deleted meanwhile cannot be (both need Redis).  Plain Python.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from loraplex.adapters.errors import StoreUnavailableError

log = logging.getLogger(__name__)

BREAKER_S = 10.0  # after a store failure: serve remembered names without asking for this long
CAPACITY = 65_536  # (tenant, name) pairs remembered, least recently resolved dropped first


class KnownAdapters:
    def __init__(
        self, stale_s: float, capacity: int = CAPACITY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stale_s = stale_s
        self.capacity = capacity
        self.clock = clock
        self._known: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._store_down_until = float("-inf")
        self.served_stale = 0  # answers given from memory while the store failed (logs, tests)

    async def resolve(
        self,
        tenant: str,
        model: str,
        ask: Callable[[str, str], Awaitable[str | None]],
        ask_peers: Callable[[str, str], Awaitable[str | None]] | None = None,
    ) -> str | None:
        """The adapter id ``model`` names for ``tenant`` (None: none that serves), from ``ask``
        (the store), or from memory while the store fails, or else from another gateway's
        memory (``ask_peers``: a gateway started during the outage knows nothing yet); raises
        ``StoreUnavailableError`` when the store fails and nobody remembers."""
        known = self.recall(tenant, model)
        if known is not None and self.store_down:
            self.served_stale += 1
            return known  # the store failed moments ago: not every request waits it out
        try:
            adapter = await ask(tenant, model)
        except StoreUnavailableError:
            self.store_failed()
            if known is None and ask_peers is not None:
                known = await ask_peers(tenant, model)
                if known is not None:
                    self.remember(tenant, model, known)
            if known is None:
                raise
            log.warning("adapter store unreachable: serving %r as last resolved", model)
            self.served_stale += 1
            return known
        if adapter is None:
            self.forget(tenant, model)
        else:
            self.remember(tenant, model, adapter)
        return adapter

    def remember(self, tenant: str, model: str, adapter_id: str) -> None:
        """The store answered: ``model`` is ``adapter_id`` for ``tenant``, and it serves."""
        key = (tenant, model)
        self._known[key] = (adapter_id, self.clock())
        self._known.move_to_end(key)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)

    def forget(self, tenant: str, model: str) -> None:
        """The store answered that ``model`` is no (served) adapter for ``tenant``."""
        self._known.pop((tenant, model), None)

    def recall(self, tenant: str, model: str) -> str | None:
        """The adapter id last answered for (``tenant``, ``model``), if recent enough."""
        hit = self._known.get((tenant, model))
        if hit is None or self.clock() - hit[1] > self.stale_s:
            return None
        return hit[0]

    def store_failed(self) -> None:
        self._store_down_until = self.clock() + BREAKER_S

    @property
    def store_down(self) -> bool:
        """A store failure was seen less than ``BREAKER_S`` ago."""
        return self.clock() < self._store_down_until
