"""Preemption on a live stack: tenant A's two long streams hold both batch slots of the one
colocated worker; tenant B's short request does not wait for them to end (A's newer stream is
preempted for it), and A's streams, through the official ``openai`` client, still end with
exactly the text of an uninterrupted run (greedy).  The same when A's streams pin both adapter
slots of the worker and B asks for a third adapter.  Only order and text are asserted, never
timings."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest

from tests.stack.conftest import launch
from tests.stack.fairness_live_helpers import KEYS, base_model, client_for

MAX_TOKENS = 256
PROMPT = [11, 12, 13, 14]


def _launch(tmp_path_factory, name: str, *extra: str):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("tenants") / "tenants.json"
    tenants = [{"name": name, "api_key": key, "weight": 1.0} for name, key in KEYS.items()]
    path.write_text(json.dumps({"tenants": tenants}))
    flags = [
        "--prefill-workers", "0", "--decode-workers", "1", "--tenants", str(path),
        "--preempt-after", "0.5", *extra,
    ]  # fmt: skip
    return launch(tmp_path_factory, name, flags)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = _launch(tmp_path_factory, "preemption", "--max-num-seqs", "2")
    yield stack
    stack.stop()


def _preemptions(stack, tenant: str) -> float:  # type: ignore[no-untyped-def]
    url = stack.status["scheduler"] + "/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith(f'loraplex_scheduler_preemptions_total{{tenant="{tenant}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_short_request_of_another_tenant_does_not_wait_for_long_streams(stack):
    asyncio.run(_short_request_does_not_wait(stack, [None, None], None))


def test_a_request_for_another_adapter_does_not_wait_for_a_pinned_slot(tmp_path_factory):
    stack = _launch(tmp_path_factory, "preemption-slots", "--max-num-seqs", "8", "--max-loras", "2")
    try:
        names = [a.name for a in stack.adapters]  # type: ignore[attr-defined]
        asyncio.run(_short_request_does_not_wait(stack, names[:2], names[2]))
    finally:
        stack.stop()


async def _short_request_does_not_wait(
    stack, adapters_a: list[str | None], adapter_b: str | None
) -> None:  # type: ignore[no-untyped-def]
    """A's long streams, one per adapter of ``adapters_a`` (None: the base model), run; B's
    short request (``adapter_b``) ends before any of them, and they end with the text of an
    uninterrupted run."""
    base = await base_model(stack)
    a, b = client_for(stack, "A"), client_for(stack, "B")

    async def stream(
        adapter: str | None, started: asyncio.Event | None = None
    ) -> tuple[str, float]:
        s = await a.completions.create(
            model=adapter or base, prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True,
            temperature=0, extra_body={"ignore_eos": True},
        )  # fmt: skip
        text = []
        async for chunk in s:
            if chunk.choices:
                text.append(chunk.choices[0].text)
                if started is not None:
                    started.set()
        return "".join(text), time.monotonic()

    expected = [(await stream(adapter))[0] for adapter in adapters_a]  # uninterrupted
    firsts = [asyncio.Event() for _ in adapters_a]
    streams = [asyncio.create_task(stream(x, e)) for x, e in zip(adapters_a, firsts, strict=True)]
    for e in firsts:  # every slot taken, every stream streaming
        await asyncio.wait_for(e.wait(), 60)
    short = await b.completions.create(model=adapter_b or base, prompt=PROMPT, max_tokens=4)
    short_done = time.monotonic()
    assert short.usage is not None and short.usage.completion_tokens == 4
    results = await asyncio.gather(*streams)
    assert [text for text, _ in results] == expected  # nothing lost or repeated
    assert short_done < min(done for _, done in results)  # B never waited for A to end
    assert _preemptions(stack, "A") >= 1 and _preemptions(stack, "B") == 0
    await a.close()
    await b.close()
