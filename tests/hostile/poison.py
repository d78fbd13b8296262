"""Poisoned adapters written straight into Redis, past every upload check (as a store filled before
validation existed would hold them), and the requests that use them.  For the crash test and
bench/reliability.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from loraplex.adapters.store import AdapterStore
from tests.hostile.adapter_files import TEMPLATE_TARGETS, AdapterFiles, fill, poke
from tests.hostile.harness import ALPHA, BETA, HostileStack, assert_openai_error, auth

PROMPT = "The quick brown fox"
# A failure the server owns (the stored adapter) may be a 500; a 502/503/504 would mean a worker
# died or the request hung, which is what this test is about.
CLEAN_FAILURE = (*range(400, 500), 500)


async def store_unchecked(hs: HostileStack, owner: str, name: str, files: AdapterFiles) -> None:
    store = AdapterStore.from_url(hs.stack.urls["redis"])
    try:
        await store.register(
            name, owner, files.config_bytes(), files.weights_bytes(),
            rank=files.config["r"], alpha=files.config["lora_alpha"], targets=TEMPLATE_TARGETS,
            visibility="private",
        )  # fmt: skip
    finally:
        await store.close()


async def alpha_text(hs: HostileStack, stream: bool) -> str:
    client = hs.async_openai(ALPHA)
    kwargs = {"model": hs.demo_adapters[0], "prompt": PROMPT, "max_tokens": 24, "temperature": 0}
    kwargs["extra_body"] = {"ignore_eos": True}
    if not stream:
        return (await client.completions.create(**kwargs)).choices[0].text
    text = ""
    async for chunk in await client.completions.create(**kwargs, stream=True):
        text += chunk.choices[0].text if chunk.choices else ""
    return text


async def poisoned_requests(hs: HostileStack, name: str) -> list[httpx.Response]:
    completion = {"model": name, "prompt": PROMPT, "max_tokens": 16}
    bodies = [
        ("/v1/completions", completion),
        ("/v1/completions", {**completion, "repetition_penalty": 1e-300, "temperature": 1e-300}),
        ("/v1/completions", {**completion, "stream": True}),
        (
            "/v1/chat/completions",
            {"model": name, "messages": [{"role": "user", "content": PROMPT}]},
        ),
    ]
    async with httpx.AsyncClient(base_url=hs.base, headers=auth(BETA), timeout=60) as client:
        return list(await asyncio.gather(*(client.post(p, json=b) for p, b in bodies)))


def assert_failed_cleanly(r: httpx.Response) -> None:
    if r.status_code != 200:
        assert_openai_error(r, CLEAN_FAILURE)
        return
    # A stream that had started: it must end with an error event, then [DONE], not just stop.
    assert r.headers["content-type"].startswith("text/event-stream"), r.text[:400]
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", f"truncated stream: {r.text[-400:]}"
    assert any('"error"' in e for e in events), f"poisoned stream did not fail: {r.text[-400:]}"


# What a poisoned store may hold: huge weights, NaN, and finite weights with a huge scaling.
POISONS: dict[str, Callable[[AdapterFiles], AdapterFiles]] = {
    "all tensors 1e30": lambda t: t.with_tensors(fill(1e30)),
    "a NaN in lora_B": lambda t: t.with_tensors(poke(float("nan"))),
    "lora_alpha 1e36": lambda t: t.with_config(lora_alpha=1e36),
}
