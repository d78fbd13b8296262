"""K/V hand-over (real ``KVSender``/``KVReceiver`` over real engines) against raw NATS publish."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loraplex.terminal import serve_progress, serve_stream
from loraplex.tooling.servers import start_nats

RAW_SUBJECT = "loraplex.bench.raw"
RAW_REPS = 3  # raw stream repetitions (median)
# Llama-3-8B's K/V geometry: 32 layers, 8 K/V heads, head_dim 128, bf16 -> 128 KiB per token.
KV_STANDIN = {"layers": 32, "kv_heads": 8, "head_dim": 128, "dtype": "bfloat16"}


@dataclass
class KVRow:
    model: str
    tokens: int
    bytes: int
    chunks: int
    kv_s: list[float] = field(default_factory=list)  # export -> first TokenDelta from the decoder
    send_s: list[float] = field(default_factory=list)  # export -> ship() returned (sender side)
    export_s: list[float] = field(default_factory=list)  # export_blocks alone
    raw_s: list[float] = field(default_factory=list)  # same bytes as bare NATS messages


def write_standin_model(out: Path) -> Path:
    """A random model with Llama-3-8B's K/V geometry (tiny everywhere else: only its K/V is used)."""
    from loraplex.tooling.demo import TinyModelSpec, write_demo_tokenizer, write_random_model

    vocab = write_demo_tokenizer(out, 1024, model_max_length=8192)
    spec = TinyModelSpec(
        hidden_size=64,
        intermediate_size=64,
        num_layers=KV_STANDIN["layers"],
        num_heads=KV_STANDIN["kv_heads"],
        num_kv_heads=KV_STANDIN["kv_heads"],
        head_dim=KV_STANDIN["head_dim"],
        vocab_size=vocab,
        max_position_embeddings=8192,
    )
    write_random_model(out, spec)
    return out


class RawSink:
    """A subscriber on its own connection that counts delivered bytes."""

    def __init__(self) -> None:
        self.received = 0
        self.target = 0
        self.done = asyncio.Event()

    async def start(self, url: str) -> None:
        import nats

        self.nc = await nats.connect(url, name="bench-raw-sink")
        # As large as needed: a slow-consumer drop would show as a hang, not as a number.
        await self.nc.subscribe(
            RAW_SUBJECT, cb=self._on_msg, pending_bytes_limit=-1, pending_msgs_limit=-1
        )
        await self.nc.flush()

    async def _on_msg(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.received += len(msg.data)
        if self.received >= self.target:
            self.done.set()

    def expect(self, n: int) -> None:
        self.received, self.target = 0, n
        self.done.clear()


async def raw_publish(pub, sink: RawSink, nbytes: int, chunk: int, block: bytes) -> float:  # type: ignore[no-untyped-def]
    """Publish ``nbytes`` as messages of ``chunk`` bytes, flush, wait until all arrived; seconds."""
    sink.expect(nbytes)
    t0 = time.perf_counter()
    left = nbytes
    while left > 0:
        n = min(chunk, left)
        await pub.publish(RAW_SUBJECT, block[:n] if n < chunk else block)
        left -= n
    await pub.flush()
    await asyncio.wait_for(sink.done.wait(), timeout=120)
    return time.perf_counter() - t0


async def kv_vs_raw(
    args: argparse.Namespace, served_model: str, tmp: Path
) -> tuple[list[KVRow], float, int, int]:
    """Hand-over timings per (model, length), raw NATS timings, raw stream MB/s, chunk size."""
    import nats

    from loraplex.bus import Bus
    from loraplex.config import EngineConfig
    from loraplex.engine.llm_engine import LLMEngine
    from loraplex.engine.outputs import KVHandoff
    from loraplex.kvcache.block_allocator import blocks_for
    from loraplex.protocol import RequestProgress, SubmitRequest, TokenDelta
    from loraplex.sampling_params import SamplingParams
    from loraplex.worker.active import Active
    from loraplex.worker.kv_transfer import chunk_size_for
    from loraplex.worker.runtime import Worker
    from loraplex.worker.settings import WorkerSettings

    logging.getLogger("loraplex.bus").setLevel(logging.ERROR)  # workers stopping say "disconnected"
    server = start_nats(tmp / "kv-nats")
    rows: list[KVRow] = []
    try:
        url = server.url
        pub = await nats.connect(url, name="bench-raw-pub")
        sink = RawSink()
        await sink.start(url)
        chunk = chunk_size_for(int(pub.max_payload))
        block = os.urandom(chunk)
        # Raw stream first (warm-up: one chunk).
        await raw_publish(pub, sink, chunk, chunk, block)
        raw_total = args.raw_mb * 10**6
        stream_s = [await raw_publish(pub, sink, raw_total, chunk, block) for _ in range(RAW_REPS)]
        raw_stream_mbs = raw_total / 1e6 / statistics.median(stream_s)
        print(
            f"   raw NATS stream: {raw_stream_mbs:.0f} MB/s ({args.raw_mb} MB in {chunk}-byte messages)",
            flush=True,
        )

        standin = write_standin_model(tmp / "kv-standin")
        targets = [
            (Path(served_model).name + " (served)", served_model, args.dtype, args.device),
            ("Llama-3-8B K/V geometry, bf16", str(standin), KV_STANDIN["dtype"], args.device),
        ]
        listener = await Bus.connect(url, "bench-kv-listener")
        arrived: dict[str, asyncio.Future] = {}  # type: ignore[type-arg]

        async def on_delta(msg: TokenDelta) -> None:
            fut = arrived.get(msg.request_id)
            if fut is not None and not fut.done():
                fut.set_result(None)

        async def on_progress(msg: RequestProgress) -> None:
            fut = arrived.get(msg.request_id)
            if msg.event in ("failed", "error") and fut is not None and not fut.done():
                fut.set_exception(
                    RuntimeError(f"hand-over of {msg.request_id} failed: {msg.message}")
                )

        await serve_stream(listener, "kvbench", on_delta, TokenDelta)
        await serve_progress(listener, on_progress)
        await listener.flush()

        for label, model_dir, dtype, device in targets:
            max_pos = json.loads((Path(model_dir) / "config.json").read_text()).get(
                "max_position_embeddings", 2048
            )
            lengths = sorted({min(n, int(max_pos) - 1) for n in args.kv_lengths})
            max_len = max(lengths) + 1
            cfg = EngineConfig(
                max_num_seqs=4,
                max_num_batched_tokens=max(4096, max_len),
                max_model_len=max_len,
                num_kv_blocks=blocks_for(max_len, 16) + 1,
                max_loras=1,
                max_lora_rank=8,
                # Every rep sends the same prompt: a decode-side prefix cache would skip blocks
                # and inflate MB/s.  This measures the full payload's trip.
                enable_prefix_caching=False,
            )
            engines = [LLMEngine(model_dir, cfg, dtype=dtype, device=device) for _ in range(2)]
            workers = []
            for role, engine in zip(("prefill", "decode"), engines, strict=True):
                s = WorkerSettings(
                    role, model_dir, url, None, f"kvbench-{role}", dtype=dtype, kv_timeout_s=60.0
                )
                w = Worker(s, engine, None)
                await w.start()
                workers.append(w)
            prefill, decode = workers
            data = prefill.engine.kv_cache.data
            data.copy_(torch.randn(data.shape, dtype=torch.float32).to(data.dtype))  # not all zeros
            vocab = prefill.engine.model_config.vocab_size
            try:
                for n_tok in lengths:
                    row = None
                    for rep in range(args.kv_reps + 1):  # rep 0: warm-up
                        rid = f"kv-{len(rows)}-{n_tok}-{rep}-{secrets.token_hex(3)}"
                        prompt = [(16 + i) % vocab for i in range(n_tok)]
                        sub = SubmitRequest(
                            rid,
                            "bench",
                            "kvbench",
                            prompt,
                            SamplingParams(max_tokens=1, ignore_eos=True),
                        )
                        req = Active(sub, None, decode_worker=decode.id)
                        blocks = prefill.engine.allocator.allocate(
                            blocks_for(n_tok, cfg.block_size)
                        )
                        prefill.active[rid] = req
                        arrived[rid] = asyncio.get_running_loop().create_future()
                        t0 = time.perf_counter()
                        payload = prefill.engine.kv_cache.export_blocks(blocks)
                        t_export = time.perf_counter() - t0
                        assert prefill.kv_sender is not None
                        await prefill.kv_sender.ship(req, KVHandoff(payload, 17, n_tok))
                        t_send = time.perf_counter() - t0
                        try:
                            await asyncio.wait_for(arrived[rid], timeout=120)
                        finally:
                            arrived.pop(rid, None)
                        t_kv = time.perf_counter() - t0
                        prefill.engine.allocator.free(blocks)
                        nbytes = payload.numel() * payload.element_size()
                        t_raw = await raw_publish(pub, sink, nbytes, chunk, block)
                        if row is None:
                            row = KVRow(label, n_tok, nbytes, -(-nbytes // chunk))
                        elif rep > 0:
                            row.kv_s.append(t_kv)
                            row.send_s.append(t_send)
                            row.export_s.append(t_export)
                            row.raw_s.append(t_raw)
                        del payload
                    assert row is not None
                    rows.append(row)
                    print(
                        f"   {label}, {n_tok} tokens ({row.bytes / 1e6:.1f} MB, {row.chunks} chunk(s)): "
                        f"K/V {row.bytes / 1e6 / statistics.median(row.kv_s):.0f} MB/s, "
                        f"raw {row.bytes / 1e6 / statistics.median(row.raw_s):.0f} MB/s",
                        flush=True,
                    )
            finally:
                for w in workers:
                    await w.stop()
                del engines, workers, prefill, decode, data
        await listener.close()
        await sink.nc.close()
        await pub.close()
        return rows, raw_stream_mbs, chunk, int(pub.max_payload)
    finally:
        server.stop()
