"""K/V hand-over over a real NATS server with a small max_payload: many chunks, same tokens."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.bus import Bus
from loraplex.config import DTYPES
from loraplex.protocol import (
    CancelRequest,
    KVBegin,
    KVChunk,
    KVReply,
    PrefillAssign,
    RequestError,
    RequestProgress,
    Subjects,
    SubmitRequest,
    TokenDelta,
    decode,
    encode,
)
from loraplex.terminal import serve_progress, serve_stream
from loraplex.tooling.demo import write_demo_model
from loraplex.tooling.servers import start_nats
from loraplex.worker.kv_transfer import (
    PendingTransfer,
    bytes_to_tensor,
    chunk_size_for,
    split,
    tensor_to_bytes,
)
from loraplex.worker.main import make_engine
from loraplex.worker.runtime import Worker
from loraplex.worker.settings import WorkerSettings

MAX_PAYLOAD = 64 * 1024


def test_pending_transfer_places_chunks_and_times_out_when_idle():
    data = bytes(range(256)) * 100
    chunks = split(data, 1000)
    t = PendingTransfer(len(chunks), len(data), idle_timeout_s=60)
    order = list(range(len(chunks)))[::-1]  # out of order is fine
    done = [t.add(i, chunks[i], 1000) for i in order]
    assert done[-1] and not any(done[:-1])
    assert bytes(t.buffer) == data
    with pytest.raises(ValueError):
        t.add(len(chunks), b"x", 1000)
    stale = PendingTransfer(2, 10, idle_timeout_s=0.01)
    assert stale.expired(time.monotonic() + 1)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_payload_bytes_are_views_not_copies(dtype: str):
    """A CPU payload goes to the wire without copies: the byte view and its chunks alias the
    exported tensor, and the receiver rebuilds the same tensor from the chunks."""
    payload = torch.randn(2, 2, 3, 4, 2, 5, generator=torch.Generator().manual_seed(1)).to(
        DTYPES[dtype]
    )
    data = tensor_to_bytes(payload)
    assert data.nbytes == payload.numel() * payload.element_size()
    chunks = split(data, 100)
    assert all(isinstance(c, memoryview) for c in chunks) and len(chunks) == -(-data.nbytes // 100)
    payload.view(-1)[0] = 7.0  # visible through the views: nothing was copied
    wire = [decode(encode(KVChunk("r", i, c)), KVChunk).data for i, c in enumerate(chunks)]
    t = PendingTransfer(len(chunks), data.nbytes, idle_timeout_s=60)
    assert [t.add(i, c, 100) for i, c in enumerate(wire)][-1]
    assert torch.equal(bytes_to_tensor(t.buffer, dtype, list(payload.shape)), payload)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("kvdemo"), num_adapters=1)


def _settings(demo, nats_url: str, role: str, **kw) -> WorkerSettings:
    return WorkerSettings(
        role=role, model=str(demo.model_dir), nats_url=nats_url, redis_url=None, worker_id=f"{role}-kv",
        dtype="float32", device="cpu", block_size=4, num_kv_blocks=256, max_model_len=256, max_loras=1,
        max_lora_rank=8, **kw,
    )  # fmt: skip


async def _run(
    demo, nats_url: str, prompts: list[list[int]], kv_timeout_s: float = 10.0, one_by_one=False
):
    workers = [Worker(s, make_engine(s), None) for s in (
        _settings(demo, nats_url, "prefill", kv_timeout_s=kv_timeout_s),
        _settings(demo, nats_url, "decode", kv_timeout_s=kv_timeout_s),
    )]  # fmt: skip
    for w in workers:
        await w.start()
    bus = await Bus.connect(nats_url, "test-gw")
    tokens: dict[str, list[int]] = {}
    texts: dict[str, list[tuple[int, str]]] = {}  # (text_start, text) per delta
    progress: list[RequestProgress] = []
    finished = asyncio.Event()
    done: set[str] = set()

    async def on_delta(m: TokenDelta | RequestError) -> None:
        if isinstance(m, RequestError):
            raise AssertionError(f"{m.request_id}: {m.message}")
        tokens.setdefault(m.request_id, []).extend(m.token_ids)
        texts.setdefault(m.request_id, []).append((m.text_start, m.text))
        if m.finish_reason:
            done.add(m.request_id)
            if len(done) == len(prompts):
                finished.set()

    async def on_progress(p: RequestProgress) -> None:
        progress.append(p)

    await serve_stream(bus, "gw", on_delta)
    await serve_progress(bus, on_progress)
    for i, p in enumerate(prompts):
        sub = SubmitRequest(
            f"r{i}", "t", "gw", p, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
        )
        await bus.publish(Subjects.worker("prefill-kv"), PrefillAssign(sub, "decode-kv"))
        while one_by_one and f"r{i}" not in done:
            await asyncio.sleep(0.01)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), 60)
    for w in workers:
        await w.stop()
    await bus.close()
    return tokens, progress, workers, texts


def _text(pieces: list[tuple[int, str]]) -> str:
    """A stream's text, each piece starting where the previous ended (no replay here)."""
    text = ""
    for start, piece in pieces:
        assert start == len(text), pieces
        text += piece
    return text


def test_many_chunk_handoff_matches_offline(demo, tmp_path):
    nats = start_nats(tmp_path / "nats", max_payload=MAX_PAYLOAD)
    try:
        prompts = [list(range(3, 3 + n)) for n in (100, 7, 60)]
        tokens, progress, (prefill, decode), texts = asyncio.run(_run(demo, nats.url, prompts))
    finally:
        nats.stop()
    payload = 100 * 2 * 4 * 2 * 32 * 4  # tokens x (k,v) x layers x kv_heads x head_dim x fp32 bytes
    assert (
        payload // chunk_size_for(MAX_PAYLOAD) >= 3
    )  # the long prompt really needs several chunks
    llm = LLM(demo.model_dir, dtype="float32", device="cpu", max_loras=1, max_lora_rank=8)
    expected = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert [tokens.get(f"r{i}") for i in range(len(prompts))] == [e.token_ids for e in expected]
    # the decode worker's detokenizer starts at the prefill worker's first token
    assert [_text(texts[f"r{i}"]) for i in range(len(prompts))] == [e.text for e in expected]
    assert {p.event for p in progress} >= {"handoff", "finished"}
    assert decode.engine.allocator.num_used == 0 and prefill.engine.allocator.num_used == 0


def test_handoff_skips_the_prefix_the_decode_worker_caches(demo, tmp_path):
    """Two prompts sharing 100 tokens, one after the other: the second hand-over ships only the
    block the decode worker does not hold yet, and both answers match offline generation."""
    nats = start_nats(tmp_path / "nats", max_payload=MAX_PAYLOAD)
    shipped: dict[str, int] = {}

    async def run():  # type: ignore[no-untyped-def]
        spy = await Bus.connect(nats.url, "spy")

        async def on_kv(m: KVBegin | KVChunk) -> None:
            if isinstance(m, KVChunk):
                shipped[m.request_id] = shipped.get(m.request_id, 0) + len(m.data)

        await spy.subscribe(Subjects.kv("decode-kv"), on_kv, (KVBegin, KVChunk))
        await spy.flush()
        shared = list(range(3, 103))
        prompts = [shared + [1], shared + [2, 3]]
        result = await _run(demo, nats.url, prompts, one_by_one=True)
        await spy.close()
        return prompts, result

    try:
        prompts, (tokens, _, (_, decode_w), _) = asyncio.run(run())
    finally:
        nats.stop()
    block = 2 * 4 * 4 * 2 * 32 * 4  # (k,v) x layers x block_size x kv_heads x head_dim x fp32
    assert shipped == {"r0": 26 * block, "r1": 1 * block}  # 25 of r1's 26 blocks were cached
    assert decode_w.engine.scheduler.prefix_hit_tokens == 25 * 4
    llm = LLM(demo.model_dir, dtype="float32", device="cpu", max_loras=1, max_lora_rank=8)
    expected = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert [tokens.get(f"r{i}") for i in range(2)] == [e.token_ids for e in expected]


async def _decode_worker(demo, nats_url: str, kv_timeout_s: float) -> tuple[Worker, Bus]:
    s = _settings(demo, nats_url, "decode", kv_timeout_s=kv_timeout_s)
    worker = Worker(s, make_engine(s), None)
    await worker.start()
    return worker, await Bus.connect(nats_url, "test-peer")


def test_stalled_transfer_frees_its_reservation(demo, nats_url):
    """KVBegin reserves blocks; when no chunk follows, they are freed and a retryable failure
    goes to the scheduler within the timeout."""

    async def run() -> tuple[int, int, list[RequestProgress]]:
        worker, bus = await _decode_worker(demo, nats_url, kv_timeout_s=0.5)
        progress: list[RequestProgress] = []

        async def on_progress(p: RequestProgress) -> None:
            progress.append(p)

        await bus.subscribe(Subjects.USAGE, on_progress, RequestProgress)
        await bus.flush()
        sub = SubmitRequest("stalled", "t", "gw", list(range(3, 43)), SamplingParams(max_tokens=4))
        begin = KVBegin(
            sub,
            first_token=7,
            num_tokens=40,
            num_chunks=2,
            dtype="float32",
            shape=[4, 2, 10, 4, 2, 32],
        )
        reply = decode(
            (await bus.nc.request(Subjects.kv(worker.id), encode(begin), timeout=10)).data, KVReply
        )
        assert reply.accepted
        reserved = worker.engine.allocator.num_used
        await asyncio.sleep(2.0)
        left = worker.engine.allocator.num_used
        await worker.stop()
        await bus.close()
        return reserved, left, progress

    reserved, left, progress = asyncio.run(run())
    assert reserved == 10 and left == 0
    assert [(p.request_id, p.event) for p in progress] == [("stalled", "failed")]
    assert "timed out" in progress[0].message


def test_cancel_frees_blocks_of_a_running_request(demo, nats_url):
    async def run() -> tuple[int, int]:
        s = _settings(demo, nats_url, "both")
        worker = Worker(s, make_engine(s), None)
        await worker.start()
        bus = await Bus.connect(nats_url, "test-peer")
        first = asyncio.Event()

        async def on_delta(m: TokenDelta) -> None:
            first.set()

        await serve_stream(bus, "gw-c", on_delta, TokenDelta)
        await bus.flush()
        sub = SubmitRequest(
            "long", "t", "gw-c", [5, 6, 7], SamplingParams(max_tokens=200, ignore_eos=True)
        )
        await bus.publish(Subjects.worker(worker.id), PrefillAssign(sub))
        await asyncio.wait_for(first.wait(), 30)
        busy = worker.engine.allocator.num_used
        await bus.publish(Subjects.worker(worker.id), CancelRequest("long"))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not worker.engine.has_unfinished():
                break
        free_after = worker.engine.allocator.num_used
        await worker.stop()
        await bus.close()
        return busy, free_after

    busy, after = asyncio.run(run())
    assert busy > 0 and after == 0
