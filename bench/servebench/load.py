"""Open-loop load: the seeded Poisson schedule, the streaming request driver, per-request records."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from .machine import load_average

REQUEST_TIMEOUT_S = 300.0
WARMUP_TOKENS = 4
PAUSE_S = 2.0  # idle between warm-up and each rate
TENANT_NAMES = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell"]


@dataclass(frozen=True)
class TenantKey:
    name: str
    api_key: str


@dataclass(frozen=True)
class Planned:
    index: int
    at: float  # seconds after the start of the run
    tenant: int
    model: int  # index into the models list (0 = base)
    prompt: list[int]
    max_tokens: int


def plan_requests(
    args: argparse.Namespace, rate: float, seed: int, num_models: int, vocab: tuple[int, int]
) -> list[Planned]:
    """The seeded open-loop schedule at ``rate``; the same for every configuration."""
    rng = random.Random(seed)
    out: list[Planned] = []
    t = rng.expovariate(rate)
    while t < args.duration:
        prompt = [rng.randrange(*vocab) for _ in range(rng.randint(*args.prompt_len))]
        out.append(
            Planned(
                len(out),
                t,
                rng.randrange(args.tenants),
                rng.randrange(num_models),
                prompt,
                rng.randint(*args.output_len),
            )
        )
        t += rng.expovariate(rate)
    return out


def token_range(model_dir: str) -> tuple[int, int]:
    """Ordinary token ids to draw prompts from (clear of the low special ids)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    vocab = int(cfg.get("vocab_size", 1024))
    lo = min(16, vocab // 4)
    return lo, min(vocab, 32000)


@dataclass
class Record:
    tenant: int
    model: int
    sent: float
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    e2e: float | None = None
    tokens: int = 0
    done: float | None = None
    error: str | None = None


@dataclass
class ServeResult:
    config: str
    label: str
    rate: float
    records: list[Record]
    window_s: float
    startup_s: float
    load_before: str
    load_after: str


async def stream_one(
    client: openai.AsyncOpenAI, model: str, prompt: list[int], max_tokens: int, rec: Record
) -> None:
    last: float | None = None
    try:
        stream = await client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                if last is None:
                    rec.ttft = now - rec.sent
                else:
                    rec.itls.append(now - last)
                last = now
            if chunk.usage is not None:
                rec.tokens = chunk.usage.completion_tokens
        rec.done = time.perf_counter()
        rec.e2e = rec.done - rec.sent
        if rec.ttft is None:
            rec.error = "no text in the stream"
    except Exception as e:  # every failure is counted; the run goes on
        rec.done = time.perf_counter()
        rec.error = f"{type(e).__name__}: {e}"[:200]


async def replay(
    base_url: str, tenants: list[TenantKey], models: list[str], plan: list[Planned]
) -> tuple[list[Record], float, str, str]:
    """Warm up, then the plan: (records, window seconds, load before, load after)."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    clients = [
        openai.AsyncOpenAI(
            base_url=base_url + "/v1",
            api_key=t.api_key,
            max_retries=0,
            timeout=REQUEST_TIMEOUT_S,
            http_client=httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S),
        )
        for t in tenants
    ]
    try:
        # Warm-up: every model once (adapters paged in on the workers), not timed.
        warm = [Record(0, i, time.perf_counter()) for i in range(len(models))]
        await asyncio.gather(
            *(
                stream_one(clients[0], m, [20, 21, 22, 23], WARMUP_TOKENS, r)
                for m, r in zip(models, warm, strict=True)
            )
        )
        failed = [(models[r.model], r.error) for r in warm if r.error]
        if failed:
            raise RuntimeError(f"warm-up failed: {failed}")
        await asyncio.sleep(PAUSE_S)
        load_before = load_average()
        records: list[Record] = []
        tasks = []
        start = time.perf_counter()
        for p in plan:
            delay = start + p.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rec = Record(p.tenant, p.model, time.perf_counter())
            records.append(rec)
            call = stream_one(clients[p.tenant], models[p.model], p.prompt, p.max_tokens, rec)
            tasks.append(asyncio.create_task(call))
        await asyncio.gather(*tasks)
        end = max((r.done or start) for r in records) if records else time.perf_counter()
        return records, end - start, load_before, load_average()
    finally:
        for c in clients:
            await c.close()
