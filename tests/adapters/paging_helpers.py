"""Harness for the adapter-paging tests (``test_paging_*.py``): on-demand paging into a
worker, Redis -> host LRU -> device slots, with real redis-server and nats-server and
in-process ``Worker`` objects (role "both").

Requests go in as ``PrefillAssign`` on the worker's subject, exactly as the scheduler sends
them; tokens come back as ``TokenDelta``/``RequestError`` on a gateway stream subject that a
real subscriber collects.  Adapters are registered through the adapter store's own
``Registrar`` (which publishes the ``AdapterEvent``s workers react to).  Greedy outputs are
compared with the offline ``loraplex.LLM`` loaded with the same PEFT files.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loraplex import LLM, SamplingParams
from loraplex.adapters.keys import adapter_id
from loraplex.adapters.registration.registrar import Registrar
from loraplex.adapters.registration.spool import Spool
from loraplex.adapters.registration.uploads import AdapterUpload
from loraplex.bus import Bus
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE
from loraplex.protocol import (
    CancelRequest,
    PrefillAssign,
    RequestError,
    Subjects,
    SubmitRequest,
    TokenDelta,
)
from loraplex.tenants import Tenant
from loraplex.terminal import serve_stream
from loraplex.tooling.demo import ALL_MODULES, ATTN_MODULES, MLP_MODULES, DemoModelInfo
from loraplex.worker.main import make_engine, make_fetch
from loraplex.worker.runtime import Worker
from loraplex.worker.settings import WorkerSettings

TENANT = Tenant("paging-tests", api_key="")
TIMEOUT = 60.0  # generous: the test machine may be busy

# local adapter id -> (rank, targets, seed).  Parsed (fp32) sizes on the demo model:
# a 256 KiB, b 224 KiB, c 72 KiB, big 1.25 MiB (alone larger than a 1 MiB host budget).
ADAPTERS = {
    "a": (8, ALL_MODULES, 11),
    "a2": (8, ALL_MODULES, 12),  # replacement weights for "a"
    "b": (16, ATTN_MODULES, 13),
    "c": (4, MLP_MODULES, 14),
    "big": (40, ALL_MODULES, 15),
}
PROMPTS = ([5, 6, 7, 8, 9, 10], [100, 200, 300], [42] * 7, [7, 8, 9])


class Reference:
    """Greedy outputs of the offline LLM (memoized)."""

    def __init__(self, demo: DemoModelInfo, adapter_dirs: dict[str, Path]) -> None:
        self.llm = LLM(
            demo.model_dir,
            dtype="float32",
            device="cpu",
            max_loras=len(adapter_dirs),
            max_lora_rank=64,
            block_size=4,
        )
        for key, path in adapter_dirs.items():
            self.llm.add_lora(key, path)
        self._memo: dict[tuple[str | None, tuple[int, ...], int], list[int]] = {}

    def __call__(self, adapter: str | None, prompt: list[int], max_tokens: int = 8) -> list[int]:
        k = (adapter, tuple(prompt), max_tokens)
        if k not in self._memo:
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            self._memo[k] = self.llm.generate(prompt, params, lora=adapter)[0].token_ids
        return self._memo[k]


# ---- per-test harness: store + registrar, a fake gateway, workers -------------------------
@dataclass
class Gateway:
    """Submits requests to a worker and collects its stream, timestamped on arrival."""

    bus: Bus
    id: str = field(default_factory=lambda: f"gw-{uuid.uuid4().hex[:8]}")
    deltas: dict[str, list[tuple[float, TokenDelta]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    errors: dict[str, RequestError] = field(default_factory=dict)
    done: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))

    async def start(self) -> None:
        await serve_stream(self.bus, self.id, self._on_msg)
        await flush_subscriptions(self.bus)

    async def _on_msg(self, msg: TokenDelta | RequestError) -> None:
        if isinstance(msg, RequestError):
            self.errors[msg.request_id] = msg
            self.done[msg.request_id].set()
            return
        self.deltas[msg.request_id].append((time.monotonic(), msg))
        if msg.finish_reason is not None:
            self.done[msg.request_id].set()

    async def submit(
        self, worker: Worker, prompt: list[int], adapter: str | None, max_tokens: int = 8
    ) -> str:
        rid = f"r-{uuid.uuid4().hex[:10]}"
        self.done[rid]  # noqa: B018  (create the event before any reply can arrive)
        sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        sub = SubmitRequest(
            rid, TENANT.name, self.id, list(prompt), sampling, adapter, arrival_ts=time.time()
        )
        await self.bus.publish(Subjects.worker(worker.id), PrefillAssign(sub))
        await self.bus.flush()
        return rid

    async def cancel(self, worker: Worker, rid: str) -> None:
        await self.bus.publish(Subjects.worker(worker.id), CancelRequest(rid))
        await self.bus.flush()

    async def wait(self, rid: str) -> None:
        await asyncio.wait_for(self.done[rid].wait(), TIMEOUT)

    async def tokens(self, rid: str) -> list[int]:
        await self.wait(rid)
        assert rid not in self.errors, self.errors[rid]
        return self.token_ids(rid)

    def token_ids(self, rid: str) -> list[int]:
        return [t for _, d in self.deltas[rid] for t in d.token_ids]

    def first_ts(self, rid: str) -> float:
        return self.deltas[rid][0][0]

    def finish_ts(self, rid: str) -> float:
        ts, last = self.deltas[rid][-1]
        assert last.finish_reason is not None
        return ts

    async def first_delta(self, rid: str) -> None:
        await until(lambda: bool(self.deltas[rid]) or rid in self.errors)
        assert rid not in self.errors, self.errors[rid]


class Gate:
    """Holds the worker's engine loop before its next step while shut (the step runs in a
    thread, so the event loop keeps serving NATS, fetches and heartbeats meanwhile); lets a test
    line requests and adapter events up deterministically instead of racing the decoder."""

    def __init__(self, worker: Worker) -> None:
        self._open = threading.Event()
        self._open.set()
        self.parked = threading.Event()
        self._step = worker.engine.step
        worker.engine.step = self._gated_step  # type: ignore[method-assign]

    def _gated_step(self):  # type: ignore[no-untyped-def]
        if not self._open.is_set():
            self.parked.set()
            self._open.wait()
        return self._step()

    def shut(self) -> None:
        """The next step waits (callable from the engine loop itself)."""
        self._open.clear()

    async def close(self) -> None:
        """Shut and wait until the engine loop is parked before a step."""
        self.shut()
        await self.wait_parked()

    async def wait_parked(self) -> None:
        await until(self.parked.is_set, what="engine loop parked at the gate")

    def open(self) -> None:
        self.parked.clear()
        self._open.set()


@dataclass
class Harness:
    demo: DemoModelInfo
    adapter_dirs: dict[str, Path]
    nats_url: str
    redis_url: str
    registrar: Registrar
    gateway: Gateway
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def store_name(self, key: str) -> str:
        """The name ``TENANT`` registers local adapter ``key`` under (unique in the shared Redis)."""
        return f"pg-{self.tag}-{key}"

    def name(self, key: str) -> str:
        """The adapter's id (``owner/name``): what the scheduler sends and the worker keys by."""
        return adapter_id(TENANT.name, self.store_name(key))

    async def register(self, key: str, as_key: str | None = None, replace: bool = False) -> int:
        """Register local adapter ``key`` under the store name of ``as_key``; returns its version."""
        path = self.adapter_dirs[key]
        upload = AdapterUpload(
            self.store_name(as_key or key),
            (path / CONFIG_FILE).read_bytes(),
            Spool.of_bytes((path / WEIGHTS_FILE).read_bytes()),
            replace=replace,
        )
        return (await self.registrar.register(TENANT, upload)).info.version

    async def delete(self, key: str) -> None:
        await self.registrar.delete(TENANT, self.store_name(key))

    @asynccontextmanager
    async def worker(
        self,
        *,
        max_loras: int = 2,
        host_cache_mb: int = 1024,
        heartbeat_interval_s: float = 0.5,
        adapter_disk_cache: str = "",
        adapter_disk_trust_s: float = 600.0,
        wrap_fetch: Callable[[Callable[[str], Awaitable[tuple[bytes, bytes, str]]]], object]
        | None = None,
    ) -> AsyncIterator[Worker]:
        settings = WorkerSettings(
            role="both",
            model=str(self.demo.model_dir),
            nats_url=self.nats_url,
            redis_url=self.redis_url,
            worker_id=f"paging-{uuid.uuid4().hex[:8]}",
            dtype="float32",
            device="cpu",
            block_size=4,
            num_kv_blocks=1024,
            max_num_seqs=16,
            max_loras=max_loras,
            max_lora_rank=64,
            host_cache_mb=host_cache_mb,
            heartbeat_interval_s=heartbeat_interval_s,
            adapter_disk_cache=adapter_disk_cache,
            adapter_disk_trust_s=adapter_disk_trust_s,
        )
        engine = await asyncio.to_thread(make_engine, settings)
        fetch, store = make_fetch(self.redis_url)
        assert fetch is not None and store is not None
        worker = Worker(settings, engine, wrap_fetch(fetch) if wrap_fetch else fetch)  # type: ignore[arg-type]
        worker.gate = Gate(worker)  # type: ignore[attr-defined]
        await worker.start()
        await flush_subscriptions(worker.bus)  # type: ignore[arg-type]
        try:
            yield worker
        finally:
            worker.gate.open()  # type: ignore[attr-defined]
            await worker.stop()
            await store.close()  # type: ignore[attr-defined]


async def flush_subscriptions(bus: Bus) -> None:
    """Make sure the server has processed this connection's SUBs before anyone publishes.

    nats-py 2.16 writes flush()'s PING straight to the socket, ahead of commands still queued
    for its flusher task (such as a SUB just issued), so one PONG does not prove the SUB
    arrived; a second PING is queued behind it.  (``Worker.start`` flushes once only.)
    """
    await bus.flush()
    await bus.flush()


async def until(
    cond: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def idle(worker: Worker) -> None:
    await until(
        lambda: not worker.active and not worker.engine.has_unfinished() and not worker.inbox,
        what="idle worker",
    )


def held(fetched: asyncio.Event, release: asyncio.Event):  # type: ignore[no-untyped-def]
    """A fetch wrapper: reads Redis, says so, then waits for ``release`` before returning."""

    def wrap(fetch):  # type: ignore[no-untyped-def]
        async def fetch_held(adapter: str) -> tuple[bytes, bytes, str]:
            got = await fetch(adapter)
            fetched.set()
            await release.wait()
            return got

        return fetch_held

    return wrap
