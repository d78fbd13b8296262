"""A worker survives what one request does to its engine, over a real nats-server.

An in-process worker (role "both") pages adapters from an in-memory store; the adapter "bad" is
poisoned (B weights 1e30) as the engine installs it, bypassing upload validation as a poisoned
store would.  Requests go in as ``PrefillAssign`` on the worker's subject; a subscriber collects
the stream (``TokenDelta``/``RequestError``) and the scheduler's usage subject.

``os._exit`` is replaced by a recorder, so a worker that would exit is seen by the test rather
than taking pytest down with it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.bus import Bus
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE
from loraplex.protocol import (
    PrefillAssign,
    RequestError,
    RequestProgress,
    Subjects,
    SubmitRequest,
    TokenDelta,
)
from loraplex.terminal import serve_progress, serve_stream
from loraplex.tooling.demo import write_demo_model
from loraplex.worker.main import make_engine
from loraplex.worker.runtime import MAX_FAILED_STEPS_IN_A_ROW, Worker
from loraplex.worker.settings import WorkerSettings
from tests.adapters.paging_helpers import flush_subscriptions, until

MAX_TOKENS = 6
PROMPT = [5, 6, 7, 8, 9, 10]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("guard-demo"), num_adapters=2)


@pytest.fixture(scope="module")
def expected(demo) -> dict[str | None, list[int]]:
    """Offline greedy tokens of PROMPT, base and with the healthy adapter."""
    llm = LLM(demo.model_dir, dtype="float32", device="cpu", max_lora_rank=64, block_size=4)
    llm.add_lora("good", demo.adapters[0].path)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return {lo: llm.generate(PROMPT, params, lora=lo)[0].token_ids for lo in (None, "good")}


class Exited(Exception):
    """Raised by the recorder in place of ``os._exit``: it ends the loop that called it, as
    the real exit would (not a SystemExit, which asyncio would raise out of the event loop)."""


@pytest.fixture
def exits(monkeypatch) -> list[int]:
    codes: list[int] = []

    def record(code: int) -> None:
        codes.append(code)
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", record)
    return codes


@dataclass
class Client:
    """Submits requests to one worker and collects what comes back for them."""

    bus: Bus
    worker: Worker
    gateway: str = field(default_factory=lambda: f"gw-{uuid.uuid4().hex[:8]}")
    tokens: dict[str, list[int]] = field(default_factory=dict)
    finish: dict[str, str] = field(default_factory=dict)
    errors: dict[str, RequestError] = field(default_factory=dict)
    progress: dict[str, list[str]] = field(default_factory=dict)

    async def start(self) -> None:
        await serve_stream(self.bus, self.gateway, self._on_stream)
        await serve_progress(self.bus, self._on_progress)
        await flush_subscriptions(self.bus)

    async def _on_stream(self, msg: TokenDelta | RequestError) -> None:
        if isinstance(msg, RequestError):
            self.errors[msg.request_id] = msg
            return
        self.tokens.setdefault(msg.request_id, []).extend(msg.token_ids)
        if msg.finish_reason is not None:
            self.finish[msg.request_id] = msg.finish_reason

    async def _on_progress(self, p: RequestProgress) -> None:
        self.progress.setdefault(p.request_id, []).append(p.event)

    async def submit(self, adapter: str | None) -> str:
        rid = f"r-{uuid.uuid4().hex[:8]}"
        spec = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
        sub = SubmitRequest(rid, "t", self.gateway, PROMPT, spec, adapter)
        await self.bus.publish(Subjects.worker(self.worker.id), PrefillAssign(sub))
        await self.bus.flush()
        return rid

    async def outcome(self, rids: list[str], exits: list[int]) -> None:
        """Wait until every request ended (or the worker exited)."""
        await until(
            lambda: bool(exits) or all(r in self.finish or r in self.errors for r in rids),
            what="requests to end",
        )


async def _worker(demo, nats_url: str) -> Worker:
    s = WorkerSettings(
        role="both", model=str(demo.model_dir), nats_url=nats_url, redis_url=None,
        worker_id=f"guard-{uuid.uuid4().hex[:8]}", dtype="float32", device="cpu", block_size=4,
        num_kv_blocks=256, max_model_len=128, max_loras=2, max_lora_rank=64, heartbeat_interval_s=0.2,
    )  # fmt: skip
    store = {"good": demo.adapters[0].path, "bad": demo.adapters[1].path}

    async def fetch(name: str) -> tuple[bytes, bytes, str]:
        path = store[name]
        return (path / CONFIG_FILE).read_bytes(), (path / WEIGHTS_FILE).read_bytes(), "1"

    engine = await asyncio.to_thread(make_engine, s)
    install = engine.add_lora_adapter

    def poisoned_install(adapter):  # type: ignore[no-untyped-def]
        if adapter.name.startswith("bad@"):
            for module in adapter.modules.values():
                module.b.fill_(1e30)
        return install(adapter)

    engine.add_lora_adapter = poisoned_install  # type: ignore[method-assign]
    worker = Worker(s, engine, fetch)
    await worker.start()
    return worker


async def _run(demo, nats_url: str, test) -> None:  # type: ignore[no-untyped-def]
    worker = await _worker(demo, nats_url)
    bus = await Bus.connect(nats_url, "guard-test")
    client = Client(bus, worker)
    await client.start()
    try:
        await test(client, worker)
    finally:
        await worker.stop()
        await bus.close()


def _assert_idle_and_clean(worker: Worker) -> None:
    eng = worker.engine
    assert not worker.active and not eng.has_unfinished()
    assert eng.allocator.num_free == eng.allocator.num_blocks
    assert not any(eng.slots.pinned(name) for name in eng.slots.resident())


async def test_poisoned_adapter_request_errors_while_the_worker_serves_on(
    demo, nats_url, expected, exits
) -> None:
    async def test(client: Client, worker: Worker) -> None:
        bad, base, good = [await client.submit(a) for a in ("bad", None, "good")]
        await client.outcome([bad, base, good], exits)
        assert exits == []
        err = client.errors[bad]
        assert err.code == 400  # the tenant's adapter is at fault
        assert (
            err.message == "the model produced non-finite logits for this request (adapter 'bad')"
        )
        assert bad not in client.tokens
        await until(lambda: bad in client.progress, what="the scheduler's report")
        assert client.progress[bad] == ["error"]  # the scheduler settles it as terminal
        assert client.tokens[base] == expected[None] and client.finish[base] == "length"
        assert client.tokens[good] == expected["good"] and client.finish[good] == "length"
        # Still alive: the engine loop runs and serves a new request.
        assert not worker._tasks[0].done()
        again = await client.submit("good")
        await client.outcome([again], exits)
        assert client.tokens[again] == expected["good"] and exits == []
        await until(lambda: not worker.active, what="requests released")
        _assert_idle_and_clean(worker)
        assert torch.isfinite(worker.engine.kv_cache.data).all()

    await _run(demo, nats_url, test)


async def test_a_failed_step_errors_its_requests_and_the_worker_goes_on(
    demo, nats_url, expected, exits
) -> None:
    async def test(client: Client, worker: Worker) -> None:
        model = worker.engine.model
        forward = model.forward
        model.forward = _raise(ValueError("injected fault"))  # type: ignore[method-assign]
        failed = await client.submit(None)
        await client.outcome([failed], exits)
        model.forward = forward  # type: ignore[method-assign]
        assert exits == []
        assert client.errors[failed].code == 500
        assert "engine step" in client.errors[failed].message
        await until(lambda: failed in client.progress, what="the scheduler's report")
        assert client.progress[failed] == ["error"]
        ok = await client.submit("good")
        await client.outcome([ok], exits)
        assert client.tokens[ok] == expected["good"] and exits == []
        await until(lambda: not worker.active, what="requests released")
        _assert_idle_and_clean(worker)

    await _run(demo, nats_url, test)


@pytest.mark.parametrize("fatal", [False, True])
async def test_the_worker_exits_when_the_engine_is_broken(demo, nats_url, exits, fatal) -> None:
    """A fatal error (out of memory, CUDA) exits at once, leaving its requests to the scheduler
    (re-dispatched when the heartbeats stop); other errors only once steps keep failing, and each
    failed step's request gets its terminal error first."""

    async def test(client: Client, worker: Worker) -> None:
        error = torch.OutOfMemoryError("CUDA out of memory") if fatal else ValueError("broken")
        worker.engine.model.forward = _raise(error)  # type: ignore[method-assign]
        for i in range(1 if fatal else MAX_FAILED_STEPS_IN_A_ROW):
            assert exits == [], f"exited after {i} failed step(s)"
            rid = await client.submit(None)  # one at a time: one failed step each
            if not fatal:
                await until(lambda: rid in client.errors, what="the request's error")  # noqa: B023
                assert client.errors[rid].code == 500
        await until(lambda: bool(exits), what="the worker to exit")
        assert exits[0] == 1

    await _run(demo, nats_url, test)


def _raise(error: Exception):  # type: ignore[no-untyped-def]
    def forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise error

    return forward
