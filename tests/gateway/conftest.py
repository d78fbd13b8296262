"""Fixtures for the gateway tests: the demo model, a *fake scheduler peer* on real NATS, and the
gateway on a real uvicorn server (in the test's event loop) over real nats-server/redis-server.

The fake scheduler is a test double for the scheduler + workers: it answers ``SUBMIT`` with a
``SubmitReply`` and then publishes ``TokenDelta`` / ``RequestError`` to the gateway's stream
subject, following a ``Plan`` the test chooses per request; it records submits and cancels.  Its
deltas carry text as a worker's do (``WorkerText``): detokenized, cut at a stop string (which
finishes the request with "stop"), placed by ``text_start``; and, when the sampling asks for
them, logprobs (``fake_scores.py``), the prompt's on the first delta as a prefill worker
sends them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from openai import AsyncOpenAI

from loraplex.gateway.app import create_app
from loraplex.gateway.header_timeout import TimedH11Protocol
from loraplex.gateway.settings import GatewaySettings
from loraplex.protocol import (
    CancelRequest,
    RequestError,
    SchedulerStats,
    Subjects,
    SubmitReply,
    SubmitRequest,
    TokenDelta,
    decode,
    encode,
)
from loraplex.text.detokenizer import IncrementalDetokenizer
from loraplex.text.tokenizer import Tokenizer
from loraplex.tooling.demo import DemoModelInfo, write_demo_model
from loraplex.tooling.ports import free_port
from tests.gateway.fake_scores import fake_logprobs, fake_prompt_logprobs
from tests.uvicorn_server import serve_app

TENANTS = {
    "tenants": [
        {"name": "alice", "api_key": "sk-alice-secret", "weight": 1},
        {"name": "bob", "api_key": "sk-bob-secret", "weight": 1},
    ]
}
ALICE_KEY = "sk-alice-secret"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": "Bearer sk-bob-secret"}
MODEL_ID = "demo-base"
REPLY_TEXT = " The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoModelInfo:
    return write_demo_model(tmp_path_factory.mktemp("demo-model"), num_adapters=2)


@pytest.fixture(scope="session")
def tokenizer(demo: DemoModelInfo) -> Tokenizer:
    return Tokenizer(demo.model_dir)


@dataclass
class Plan:
    """What the fake scheduler does with one request."""

    code: int = 200  # != 200: refuse with this code
    message: str = ""
    tokens: list[int] = field(default_factory=list)
    chunk: int = 3  # tokens per delta
    delay_s: float = 0.0  # between deltas
    finish_reason: str | None = "stop"  # None: never finish (go silent after the tokens)
    error: tuple[int, str] | None = None  # send RequestError after the tokens
    replay_after: int = (
        0  # > 0: send that many tokens, then start over from the first (re-dispatch)
    )
    cached_tokens: int = 0  # prefix-cache hits the "worker" reports on each delta


class WorkerText:
    """One request's text as a worker makes it (``RequestTracker``): one detokenizer from the
    first token, stop strings cut and ending the request, text placed by character offset."""

    def __init__(self, tokenizer: Tokenizer, req: SubmitRequest) -> None:
        s = req.sampling
        self.detok = IncrementalDetokenizer(
            tokenizer, s.stop, s.skip_special_tokens, context_ids=req.prompt_token_ids
        )

    def add(self, ids: list[int]) -> tuple[list[int], str, int]:
        """The tokens taken (up to one that completes a stop string), their text, its offset."""
        start, taken, pieces = len(self.detok.text), [], []
        for token in ids:
            taken.append(token)
            pieces.append(self.detok.append(token))
            if self.stopped:
                break
        return taken, "".join(pieces), start

    @property
    def stopped(self) -> bool:
        return self.detok.stopped is not None


class FakeScheduler:
    def __init__(self, nats_url: str, tokenizer: Tokenizer) -> None:
        self.nats_url = nats_url
        self.tokenizer = tokenizer
        self.plan: Callable[[SubmitRequest], Plan] = lambda _: Plan()
        self.submits: list[SubmitRequest] = []
        self.cancels: list[CancelRequest] = []
        self.reply_delay_s = 0.0  # before answering each SUBMIT (a busy scheduler)
        self._tasks: set[asyncio.Task[None]] = set()
        self.nc: nats.NATS | None = None

    async def start(self) -> None:
        self.nc = await nats.connect(self.nats_url)
        await self.nc.subscribe(Subjects.SUBMIT, cb=self._on_submit)
        await self.nc.subscribe(Subjects.CANCEL, cb=self._on_cancel)
        await self.nc.flush()
        self._tasks.add(asyncio.create_task(self._broadcast()))

    async def _broadcast(self) -> None:
        """What a scheduler with one colocated worker says every second (the gateway's /ready)."""
        assert self.nc is not None
        stats = SchedulerStats({}, {}, {}, {"prefill": 0, "decode": 0, "both": 1})
        while True:
            await self.nc.publish(Subjects.STATS, encode(stats))
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.nc is not None:
            await self.nc.close()

    async def wait_cancel(self, request_id: str, timeout: float = 5.0) -> CancelRequest:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for c in self.cancels:
                if c.request_id == request_id:
                    return c
            await asyncio.sleep(0.02)
        raise AssertionError(f"no CancelRequest for {request_id} within {timeout}s")

    def says(
        self,
        answer: str | list[int],
        *,
        chunk: int = 1,
        finish: str | None = "stop",
        error: tuple[int, str] | None = None,
    ) -> None:
        """Answer every request with ``answer`` (a text is encoded without special tokens),
        ``chunk`` tokens a delta, ending with ``finish`` (and ``error`` after, if given)."""
        ids = (
            self.tokenizer.encode(answer, add_special_tokens=False)
            if isinstance(answer, str)
            else answer
        )
        self.plan = lambda _: Plan(tokens=list(ids), chunk=chunk, finish_reason=finish, error=error)

    async def _on_cancel(self, msg: nats.aio.msg.Msg) -> None:
        self.cancels.append(decode(msg.data, CancelRequest))

    async def _on_submit(self, msg: nats.aio.msg.Msg) -> None:
        req = decode(msg.data, SubmitRequest)
        self.submits.append(req)
        plan = self.plan(req)
        accepted = plan.code == 200
        if self.reply_delay_s:
            await asyncio.sleep(self.reply_delay_s)
        await msg.respond(encode(SubmitReply(req.request_id, accepted, plan.code, plan.message)))
        if accepted:
            task = asyncio.create_task(self._stream(req, plan))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _stream(self, req: SubmitRequest, plan: Plan) -> None:
        assert self.nc is not None
        subject = Subjects.stream(req.gateway_id)
        toks = plan.tokens
        if plan.replay_after:  # a first worker's tokens; its replacement starts again at token 0
            first, text, _ = WorkerText(self.tokenizer, req).add(toks[: plan.replay_after])
            delta = TokenDelta(
                req.request_id, first, text, None, len(req.prompt_token_ids), len(first)
            )
            await self.nc.publish(subject, encode(delta))
        worker = WorkerText(self.tokenizer, req)
        starts = list(range(0, len(toks), plan.chunk)) or [0]
        for n, start in enumerate(starts):
            if any(c.request_id == req.request_id for c in self.cancels):
                return
            last = n == len(starts) - 1
            ids, text, text_start = worker.add(toks[start : start + plan.chunk])
            finish = plan.finish_reason if last and plan.error is None else None
            if worker.stopped:
                finish = "stop"
            if finish is not None:
                text += worker.detok.flush()
            if ids or finish is not None:
                k = req.sampling.logprobs
                lps = (
                    None
                    if k is None
                    else [fake_logprobs(t, start + i, k) for i, t in enumerate(ids)]
                )
                delta = TokenDelta(
                    req.request_id, ids, text, finish, len(req.prompt_token_ids), start + len(ids),
                    logprobs=lps, prompt_logprobs=fake_prompt_logprobs(req) if n == 0 else None,
                    cached_tokens=plan.cached_tokens, text_start=text_start,
                )  # fmt: skip
                await self.nc.publish(subject, encode(delta))
            if worker.stopped:
                return
            if plan.delay_s:
                await asyncio.sleep(plan.delay_s)
        if plan.error is not None:
            await self.nc.publish(subject, encode(RequestError(req.request_id, *plan.error)))


@pytest.fixture
async def scheduler(nats_url: str, tokenizer: Tokenizer) -> AsyncIterator[FakeScheduler]:
    fake = FakeScheduler(nats_url, tokenizer)
    await fake.start()
    yield fake
    await fake.stop()


def serve(settings: GatewaySettings) -> AbstractAsyncContextManager[str]:
    """Run the gateway on a real uvicorn server in this event loop; yields its base URL."""
    # with the gateway's own h11 protocol (peer probes, the header deadline), as
    # ``python -m loraplex.gateway`` runs it
    return serve_app(create_app(settings), settings.host, settings.port, http=TimedH11Protocol)


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(TENANTS))
    return path


GatewayFactory = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def gateway_factory(
    demo: DemoModelInfo, nats_url: str, redis_url: str, tenants_file: Path
) -> GatewayFactory:
    """``async with gateway_factory(**settings overrides) as base_url:`` (tenants alice/bob)."""

    def start(**overrides: object) -> AbstractAsyncContextManager[str]:
        base: dict[str, object] = {
            "model_dir": str(demo.model_dir),
            "model_id": MODEL_ID,
            "max_model_len": 256,
            "nats_url": nats_url,
            "redis_url": redis_url,
            "redis_prefix": f"gw-{uuid.uuid4().hex[:10]}",
            "tenants_file": str(tenants_file),
            "port": free_port(),
            "request_timeout_s": 5.0,
            "submit_timeout_s": 2.0,
        }
        base.update(overrides)
        return serve(GatewaySettings(**base))  # type: ignore[arg-type]

    return start


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory() as url:
        yield url


async def register_adapter(http, path: Path, name: str, headers: dict[str, str], **form: str):  # type: ignore[no-untyped-def]
    files = [
        (
            "files",
            (
                "adapter_config.json",
                (path / "adapter_config.json").read_bytes(),
                "application/json",
            ),
        ),
        (
            "files",
            (
                "adapter_model.safetensors",
                (path / "adapter_model.safetensors").read_bytes(),
                "application/octet-stream",
            ),
        ),
    ]
    return await http.post(
        "/v1/adapters", data={"name": name, **form}, files=files, headers=headers
    )


@pytest.fixture
async def oai(gateway: str) -> AsyncIterator[AsyncOpenAI]:
    """The official client of the test's ``gateway`` (a module may override that fixture)."""
    async with openai_client(gateway) as client:
        yield client


@asynccontextmanager
async def openai_client(url: str) -> AsyncIterator[AsyncOpenAI]:
    """An ``AsyncOpenAI`` client of the gateway at ``url`` as alice, closed afterwards."""
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=ALICE_KEY, max_retries=0, timeout=10)
    try:
        yield client
    finally:
        await client.close()
