"""Pages adapters into a worker: Redis -> host LRU (byte budget) -> engine device slots.

With ``disk`` (``--adapter-disk-cache``), every adapter paged in is also kept on local disk, and
when Redis cannot be reached a recently confirmed copy stands in for it (``adapters.disk_copies``):
a worker restarted during a Redis outage still serves the adapters it held.

Fetching and parsing run off the engine loop, so the running batch keeps decoding while an
adapter loads; the engine only sees an adapter once it is fully parsed (``install``).

Adapters are named here by their id ``owner/name`` (``adapters.keys``: what the scheduler sends,
what heartbeats list), so two tenants' adapters of the same name never meet.  Inside the engine an
adapter is keyed ``owner/name@version``: when an adapter is replaced upstream,
requests already running keep the old copy and new requests page in the new one.  A merged
adapter (LoRAX's ``merged_adapters``; its id names its components, ``lora.merge_spec``) is built
here from its components, each paged in as usual, and is invalidated with any of them.  Resolution
(``prepare``, ``invalidate``) happens on the event loop; everything that touches the engine
(``install``, ``pin``, ``unpin``, ``retire``) happens on the engine loop between steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loraplex.adapters.disk_copies import DiskCopies
from loraplex.adapters.errors import StoreUnavailableError
from loraplex.engine.llm_engine import LLMEngine
from loraplex.errors import AdapterError, AdapterNotFoundError
from loraplex.lora.adapter import LoraAdapter, parse_adapter
from loraplex.lora.host_cache import HostAdapterCache
from loraplex.lora.merge import merge_adapters
from loraplex.lora.merge_spec import is_merged_id, parse_merged_id
from loraplex.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)
# adapter id -> (adapter_config.json bytes, adapter_model.safetensors bytes, version)
Fetch = Callable[[str], Awaitable[tuple[bytes, bytes, str]]]


@dataclass(frozen=True)
class Resolved:
    """What a request needs to install and pin its adapter on the engine loop."""

    name: str  # the adapter id, owner/name
    key: str  # engine key owner/name@version
    adapter: LoraAdapter  # kept so the install can re-add it if it was evicted meanwhile
    generation: int  # the name's generation when resolved; stale ones never become current


class AdapterPager:
    def __init__(
        self,
        engine: LLMEngine,
        fetch: Fetch | None,
        budget_bytes: int,
        metrics: WorkerMetrics | None = None,
        disk: DiskCopies | None = None,
    ) -> None:
        self.engine = engine
        self.fetch = fetch
        self.disk = disk
        self.metrics = metrics  # page-ins and their latency (fetch + parse)
        self.cache: HostAdapterCache[LoraAdapter] = HostAdapterCache(budget_bytes)
        self.current: dict[str, str] = {}  # adapter name -> engine key of its newest copy here
        self._generation: dict[str, int] = {}  # bumped by every upstream change of the name
        self._loading: dict[str, asyncio.Task[LoraAdapter]] = {}
        self._stale: set[str] = set()  # engine keys to drop as soon as no request uses them
        self._from_disk: set[str] = set()  # engine keys served from a disk copy, not rechecked
        self._writes: set[asyncio.Task[None]] = set()  # disk copies being written
        self._merged_into: dict[str, set[str]] = {}  # component name -> merged names built on it
        self._merging = asyncio.Semaphore(1)
        self.loads = 0  # adapters fetched from the store

    def names(self) -> list[str]:
        return sorted(self.current)

    # ---- event loop --------------------------------------------------------------------------
    async def prepare(self, name: str) -> Resolved:
        """Resolve ``name``, fetching and parsing it when it is not resident (runs beside engine
        steps).  Raises AdapterNotFoundError when the store does not have it."""
        generation = self._generation.get(name, 0)
        key = self.current.get(name)
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return Resolved(name, key, hit, generation)
        task = self._loading.get(name)
        if task is None:
            task = asyncio.create_task(self._load(name))
            self._loading[name] = task
            task.add_done_callback(
                lambda t: self._loading.pop(name, None) if self._loading.get(name) is t else None
            )
        adapter = await asyncio.shield(task)
        return Resolved(name, adapter.name, adapter, generation)

    async def _load(self, name: str) -> LoraAdapter:
        t0 = time.perf_counter()
        try:
            adapter, outcome = await self._fetch_and_parse(name)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._unlink_merged(name)
            if self.metrics is not None:
                self.metrics.page_in(time.perf_counter() - t0, "error")
            raise
        if self.metrics is not None:
            self.metrics.page_in(time.perf_counter() - t0, outcome)
        if outcome == "disk":
            self._from_disk.add(adapter.name)
        return adapter

    async def _fetch_and_parse(self, name: str) -> tuple[LoraAdapter, str]:
        """The parsed adapter, and where it came from: "ok" (the store), "disk" or "merged"."""
        if is_merged_id(name):
            return await self._merge(name), "merged"
        if self.fetch is None:
            raise AdapterNotFoundError(
                f"adapter {name!r} is not available on this worker (no adapter store)"
            )
        generation = self._generation.get(name, 0)
        config_bytes, weight_bytes, version, outcome = await self._fetch_or_recall(name)
        self.loads += 1
        cfg, max_rank = self.engine.model_config, self.engine.config.max_lora_rank
        bare = name.partition("/")[2] or name  # parse errors reach the tenant: its own name
        adapter = await asyncio.to_thread(
            parse_adapter, bare, config_bytes, weight_bytes, cfg, max_rank
        )
        if self.disk is not None and outcome == "ok":  # only what parsed: a copy that can serve
            # Written beside the request, not before it: a large adapter's write would add to
            # its page-in.
            task = asyncio.create_task(
                self._keep_copy(name, version, config_bytes, weight_bytes, generation)
            )
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        return dataclasses.replace(adapter, name=f"{name}@{version}"), outcome

    async def _merge(self, name: str) -> LoraAdapter:
        """Build merged adapter ``name`` from its components, paged in as usual (so they may come
        from disk copies), merged in a thread.  Linked to them first: a component replaced while
        it builds makes this build stale."""
        spec = parse_merged_id(name)
        for part in spec.adapters:
            self._merged_into.setdefault(part, set()).add(name)
        # One build at a time: a merge holds every component parsed in host memory, so merges
        # that tenants start together must not add up.
        async with self._merging:
            parts = await asyncio.gather(*(self.prepare(part) for part in spec.adapters))
            merge = [p.adapter for p in parts]
            adapter = await asyncio.to_thread(merge_adapters, name, spec, merge)
        # Its version: its components' engine keys (each names its version).
        version = hashlib.sha256("|".join(p.key for p in parts).encode()).hexdigest()[:16]
        return dataclasses.replace(adapter, name=f"{name}@m{version}")

    def _unlink_merged(self, name: str) -> None:
        """Merged ``name`` is no longer resident: its components stop pointing at it, unless
        another build of it is under way (from a failed build, its own task is)."""
        if not is_merged_id(name) or name in self.current:
            return
        building = self._loading.get(name)
        if building is not None and building is not asyncio.current_task():
            return
        try:
            parts = parse_merged_id(name).adapters
        except AdapterError:
            return  # malformed: never linked
        for part in parts:
            users = self._merged_into.get(part)
            if users is not None:
                users.discard(name)
                if not users:
                    del self._merged_into[part]

    async def _keep_copy(
        self, name: str, version: str, config: bytes, weights: bytes, generation: int
    ) -> None:
        """Keep the disk copy of a fetched version, unless an event retired it meanwhile."""
        assert self.disk is not None
        if generation != self._generation.get(name, 0):
            return
        try:
            await asyncio.to_thread(self.disk.keep, name, version, config, weights)
            if generation != self._generation.get(name, 0):  # an event during the write
                await asyncio.to_thread(self.disk.drop, name)
        except OSError as e:  # a full or read-only disk costs the copy, not the request
            log.warning("adapter %s: no disk copy kept: %s", name, e)

    async def copies_written(self) -> None:
        """Wait for the disk copies being written (tests)."""
        if self._writes:
            await asyncio.gather(*self._writes)

    async def _fetch_or_recall(self, name: str) -> tuple[bytes, bytes, str, str]:
        assert self.fetch is not None
        try:
            config_bytes, weight_bytes, version = await self.fetch(name)
        except StoreUnavailableError:
            copy = await asyncio.to_thread(self.disk.recall, name) if self.disk else None
            if copy is None:
                raise
            log.warning("adapter store unreachable: %s v%s from its disk copy", name, copy.version)
            return copy.config_bytes, copy.weights_bytes, copy.version, "disk"
        except AdapterNotFoundError:
            if self.disk is not None:  # deleted while this worker was away
                await asyncio.to_thread(self.disk.drop, name)
            raise
        return config_bytes, weight_bytes, version, "ok"

    def invalidate(self, name: str) -> list[str]:
        """The adapter was replaced or deleted upstream: from now on requests fetch it again, and
        build again the merged adapters made with it.

        Returns the old engine keys, which the caller retires on the engine loop.
        """
        self._generation[name] = self._generation.get(name, 0) + 1
        self._loading.pop(name, None)  # a fetch in flight may carry the old version
        if self.disk is not None and not is_merged_id(name):
            self.disk.drop(name)  # a few unlinks: on the loop, so no later recall can race it
        old = self.current.pop(name, None)
        stale = [] if old is None else [old]
        for merged in sorted(self._merged_into.pop(name, ())):
            stale += self.invalidate(merged)
        return stale

    async def confirm_disk_copies(self) -> None:
        """The copies this process kept are still current (it hears every change event): they
        stay trusted.  Not the ones it only read back: nobody confirmed those
        (``recheck_disk_served``)."""
        if self.disk is not None:
            await asyncio.to_thread(self.disk.confirm)

    async def recheck_disk_served(self) -> list[str]:
        """Ask the store about each adapter served from a disk copy, until it answers: one
        replaced or deleted while this worker was away is invalidated.  Returns the engine keys
        to retire on the engine loop."""
        stale: list[str] = []
        if self.disk is None or self.fetch is None:
            return stale
        for name, key in list(self.current.items()):
            if key not in self._from_disk:
                continue
            try:
                config_bytes, weight_bytes, version = await self.fetch(name)
            except StoreUnavailableError:
                break  # still down: next time
            except AdapterNotFoundError:
                config_bytes, weight_bytes, version = b"", b"", ""
            if self.current.get(name) != key:
                continue  # an event changed it meanwhile
            self._from_disk.discard(key)
            if version == key.rpartition("@")[2]:  # still current: confirmed from now on
                await asyncio.to_thread(self.disk.keep, name, version, config_bytes, weight_bytes)
                if self.current.get(name) != key:  # an event during the write
                    await asyncio.to_thread(self.disk.drop, name)
            else:
                log.info("adapter %s changed while the store was away: paged in again", name)
                stale += self.invalidate(name)
        return stale

    # ---- engine loop -------------------------------------------------------------------------
    def install(self, r: Resolved) -> None:
        """Make ``r`` resident (again, if it was evicted since ``prepare``)."""
        if r.key not in self.cache:
            if r.key not in self.engine.adapters:
                self.engine.add_lora_adapter(r.adapter)
            for evicted in self.cache.put(r.key, r.adapter, r.adapter.nbytes):
                self._forget(evicted)
        else:
            self.cache.get(r.key)
        if r.generation == self._generation.get(r.name, 0):
            old = self.current.get(r.name)
            if old is not None and old != r.key:
                self.retire(old)
            self.current[r.name] = r.key
        elif not self.cache.pinned(r.key):
            self._stale.add(r.key)  # resolved before an upstream change: serve, then drop

    def pin(self, key: str) -> None:
        self.cache.pin(key)

    def unpin(self, key: str) -> None:
        for evicted in self.cache.unpin(key):
            self._forget(evicted)
        if key in self._stale and not self.cache.pinned(key):
            self._drop(key)

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
        self._from_disk.discard(key)
        if key in self.engine.adapters:
            self.engine.remove_lora(key)
        for name, k in list(self.current.items()):
            if k == key:
                del self.current[name]
                self._unlink_merged(name)
