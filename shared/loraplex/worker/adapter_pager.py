"""Pages adapters into a worker: Redis -> host LRU (byte budget) -> engine device slots.

Fetching and parsing run off the engine loop, so the running batch keeps decoding while an
adapter loads; the engine only sees an adapter once it is fully parsed (``install``).

Inside the engine an adapter is keyed ``name@version``: when an adapter is replaced upstream,
requests already running keep the old copy and new requests page in the new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from loraplex.engine.llm_engine import LLMEngine
from loraplex.errors import AdapterNotFoundError
from loraplex.lora.adapter import LoraAdapter, parse_adapter
from loraplex.lora.host_cache import HostAdapterCache

log = logging.getLogger(__name__)
# name -> (adapter_config.json bytes, adapter_model.safetensors bytes, version)
Fetch = Callable[[str], Awaitable[tuple[bytes, bytes, str]]]


class AdapterPager:
    def __init__(self, engine: LLMEngine, fetch: Fetch | None, budget_bytes: int) -> None:
        self.engine = engine
        self.fetch = fetch
        self.cache: HostAdapterCache[LoraAdapter] = HostAdapterCache(budget_bytes)
        self.current: dict[str, str] = {}  # adapter name -> engine key of its newest copy here
        self._loading: dict[str, asyncio.Task[LoraAdapter]] = {}
        self._stale: set[str] = set()  # engine keys to drop as soon as no request uses them
        self.loads = 0

    def names(self) -> list[str]:
        return sorted(self.current)

    async def prepare(self, name: str) -> tuple[str, LoraAdapter | None]:
        """Resolve ``name`` to an engine key, fetching and parsing it when it is not resident.

        Returns (key, adapter to install or None when already resident).  Runs concurrently with
        engine steps; raises AdapterNotFoundError when the store does not have it.
        """
        key = self.current.get(name)
        if key is not None and key in self.cache:
            self.cache.get(key)  # touch for LRU
            return key, None
        task = self._loading.get(name)
        if task is None:
            task = asyncio.create_task(self._load(name))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        adapter = await asyncio.shield(task)
        return adapter.name, adapter

    async def _load(self, name: str) -> LoraAdapter:
        if self.fetch is None:
            raise AdapterNotFoundError(f"adapter {name!r} is not available on this worker (no adapter store)")
        config_bytes, weight_bytes, version = await self.fetch(name)
        cfg, max_rank = self.engine.model_config, self.engine.config.max_lora_rank
        adapter = await asyncio.to_thread(parse_adapter, name, config_bytes, weight_bytes, cfg, max_rank)
        self.loads += 1
        return dataclasses.replace(adapter, name=f"{name}@{version}")

    # The methods below touch the engine: call them only from the engine loop (between steps).
    def install(self, name: str, key: str, adapter: LoraAdapter | None) -> None:
        if adapter is not None and key not in self.cache:
            self.engine.add_lora_adapter(adapter)
            for evicted in self.cache.put(key, adapter, adapter.nbytes):
                self._forget(evicted)
        old = self.current.get(name)
        if old is not None and old != key:
            self.retire(old)
        self.current[name] = key

    def pin(self, key: str) -> None:
        self.cache.pin(key)

    def unpin(self, key: str) -> None:
        for evicted in self.cache.unpin(key):
            self._forget(evicted)
        if key in self._stale and not self.cache.pinned(key):
            self._drop(key)

    def invalidate(self, name: str) -> None:
        """The adapter was replaced or deleted upstream: new requests must fetch it again."""
        key = self.current.pop(name, None)
        if key is not None:
            self.retire(key)

    def retire(self, key: str) -> None:
        if self.cache.pinned(key):
            self._stale.add(key)
        else:
            self._drop(key)

    def _drop(self, key: str) -> None:
        self._stale.discard(key)
        self.cache.drop(key)
        self._forget(key)

    def _forget(self, key: str) -> None:
        if key in self.engine.adapters:
            self.engine.remove_lora(key)
        for name, k in list(self.current.items()):
            if k == key:
                del self.current[name]
