"""The live mode's clients: replaying arrivals through the official ``openai`` client as streaming
requests, logging the service they receive, and turning that log into a ``SimResult``."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from loraplex.scheduler.policies.base import QueuedRequest
from loraplex.tooling.simulator import SimResult

from .workloads import PROMPT_VOCAB, api_key

if TYPE_CHECKING:
    import openai


@dataclass
class LiveLog:
    """What the clients saw: service events, first-token latencies, outcomes per tenant."""

    t0: float
    w_p: float = 1.0
    w_q: float = 2.0
    # (seconds since t0, tenant, service credited, tokens credited)
    events: list[tuple[float, str, float, int]] = field(default_factory=list)
    ttft: dict[str, list[float]] = field(default_factory=dict)
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)  # tenant -> outcome -> n

    def now(self) -> float:
        return time.monotonic() - self.t0

    def credit(self, tenant: str, prompt_tokens: int, output_tokens: int) -> None:
        service = self.w_p * prompt_tokens + self.w_q * output_tokens
        self.events.append((self.now(), tenant, service, prompt_tokens + output_tokens))

    def outcome(self, tenant: str, what: str) -> None:
        self.outcomes.setdefault(tenant, Counter())[what] += 1


def openai_client(base: str, tenant: str) -> openai.AsyncOpenAI:
    import openai

    return openai.AsyncOpenAI(
        base_url=base + "/v1", api_key=api_key(tenant), max_retries=0, timeout=300
    )


async def stream_one(
    client: openai.AsyncOpenAI, model: str, req: QueuedRequest, prompt: list[int], log: LiveLog
) -> None:
    """Send ``req`` at its arrival time (streaming) and credit its service as tokens arrive.

    Input tokens are credited with the first token, ``w_q`` per streamed chunk after that, and the
    final usage corrects the counts (the usage chunk is authoritative)."""
    import openai

    await asyncio.sleep(max(0.0, req.arrival - log.now()))
    tenant, counted_out, counted_in = req.tenant, 0, 0
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=req.max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )  # fmt: skip
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    u = chunk.usage
                    log.credit(
                        tenant, u.prompt_tokens - counted_in, u.completion_tokens - counted_out
                    )
                    counted_in, counted_out = u.prompt_tokens, u.completion_tokens
                elif chunk.choices:
                    if counted_in == 0:
                        log.ttft.setdefault(tenant, []).append(log.now() - req.arrival)
                    log.credit(tenant, len(prompt) - counted_in, 1)
                    counted_in, counted_out = len(prompt), counted_out + 1
        log.outcome(tenant, "finished")
    except openai.RateLimitError:
        log.outcome(tenant, "rejected")
    except openai.APIError:
        log.outcome(tenant, "error")


async def gateway_in_flight(metrics: str) -> float:
    """From the gateway's /metrics listener (its own port: the series name tenants)."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(metrics)).text
    line = next(
        x for x in text.splitlines() if x.startswith("loraplex_gateway_requests_in_flight ")
    )
    return float(line.split()[1])


async def drain(metrics: str, timeout: float = 60.0) -> None:
    """Wait until the gateway has nothing in flight (cancelled requests left the system)."""
    deadline = time.monotonic() + timeout
    while await gateway_in_flight(metrics) > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # cancellations reach the scheduler and workers


async def drive(
    base: str,
    metrics: str,
    arrivals: list[QueuedRequest],
    duration_s: float,
    seed: int,
    tenant_of: Callable[[str], str],
) -> LiveLog:
    """Replay ``arrivals`` for ``duration_s``, then cancel what is left and wait for the drain.

    ``tenant_of(client)``: the tenant (API key) a workload client sends as."""
    rng = random.Random(seed)
    clients = {c: openai_client(base, tenant_of(c)) for c in sorted({a.tenant for a in arrivals})}
    model = (await next(iter(clients.values())).models.list()).data[0].id
    log = LiveLog(t0=time.monotonic())
    tasks = [
        asyncio.create_task(
            stream_one(
                clients[a.tenant], model, a, rng.choices(PROMPT_VOCAB, k=a.input_tokens), log
            )
        )
        for a in arrivals
    ]
    await asyncio.sleep(max(0.0, duration_s - log.now()))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients.values():
        await c.close()
    await drain(metrics)
    return log


def live_result(log: LiveLog, arrivals: list[QueuedRequest], duration_s: float) -> SimResult:
    """The clients' view as a ``SimResult``, so the simulator's metrics and plots apply."""
    res = SimResult(duration_s, log.w_p, log.w_q, arrivals)
    tenants = sorted({a.tenant for a in arrivals})
    cum = dict.fromkeys(tenants, 0.0)
    res.service = {k: [0.0] for k in tenants}
    for t, tenant, service, tokens in sorted(e for e in log.events if e[0] <= duration_s):
        cum[tenant] += service
        res.tokens_served += tokens
        res.times.append(t)
        for k in tenants:
            res.service[k].append(cum[k])
    res.latencies = {k: log.ttft.get(k, []) for k in tenants}
    return res
