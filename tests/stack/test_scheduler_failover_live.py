"""`loraplex up --schedulers 2`: SIGKILL the leading scheduler of a live stack mid-load.

Through the real gateway (its resubmission to the new leader), a real worker (its epoch check)
and the official ``openai`` client: requests running at the kill, requests queued at the kill and
requests sent during the failover all complete, each with exactly the text of an uninterrupted
greedy run; the standby leads afterwards.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
import redis

from loraplex.scheduler.leader import LEASE_SUFFIX

from .conftest import launch

MAX_TOKENS = 48
PROMPTS = [f"Replica test prompt {i}: the" for i in range(6)]


@pytest.fixture(scope="module")
def replica_stack(tmp_path_factory):
    flags = ["--prefill-workers", "0", "--decode-workers", "1", "--schedulers", "2"]
    # Two slots: while two requests run, the others wait in the leader's queue.
    stack = launch(tmp_path_factory, "replicas", [*flags, "--max-num-seqs", "2"])
    yield stack
    stack.stop()


def leaders(stack) -> list[str]:  # type: ignore[no-untyped-def]
    """The schedulers whose /ready says they lead (what an operator sees, without Redis); one
    not answering (restarting after a kill) does not lead."""
    out = []
    for name in ("scheduler", "scheduler-1"):
        try:
            if httpx.get(stack.status[name] + "/ready", timeout=10).json()["leader"]:
                out.append(name)
        except httpx.HTTPError:
            pass
    return out


def lease_holder(stack) -> str:  # type: ignore[no-untyped-def]
    with redis.Redis.from_url(stack.urls["redis"]) as r:
        raw = r.get("loraplex" + LEASE_SUFFIX)
    assert raw, "no scheduler leads"
    return raw.decode()


async def _stream(client: openai.AsyncOpenAI, model: str, prompt: str, started: asyncio.Event) -> str:  # fmt: skip
    parts = []
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            parts.append(chunk.choices[0].text)
            started.set()
    return "".join(parts)


async def test_leader_killed_mid_load_loses_nothing(replica_stack):
    base = replica_stack.urls["gateway"] + "/v1"
    async with openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0, timeout=120) as client:
        model = (await client.models.list()).data[0].id
        reference = {}
        for p in PROMPTS:  # uninterrupted greedy runs
            r = await client.completions.create(
                model=model, prompt=p, max_tokens=MAX_TOKENS, temperature=0.0,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            reference[p] = r.choices[0].text
        holder = lease_holder(replica_stack)
        name = holder.rsplit(":", 1)[0]
        assert leaders(replica_stack) == [name]
        started = asyncio.Event()
        running = [asyncio.create_task(_stream(client, model, p, started)) for p in PROMPTS]
        await asyncio.wait_for(started.wait(), 60)  # two run, four are queued in the leader
        replica_stack.proc(name).kill()
        # Sent into the failover gap: the gateway waits for the new leader instead of a 503.
        late = [
            asyncio.create_task(_stream(client, model, p, asyncio.Event())) for p in PROMPTS[:2]
        ]
        texts = await asyncio.wait_for(asyncio.gather(*running, *late), 120)
    assert texts == [reference[p] for p in PROMPTS + PROMPTS[:2]]
    new = lease_holder(replica_stack)
    assert new != holder and int(new.rsplit(":", 1)[1]) > int(holder.rsplit(":", 1)[1])
    assert leaders(replica_stack) == [new.rsplit(":", 1)[0]]  # the restarted one stands by
