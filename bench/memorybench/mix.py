"""The traffic of bench/memory.py: every kind of request a long-running stack sees, the awkward ones
included (a client that hangs up mid-stream, a 400, a 404, ``n`` > 1 with logprobs), through the
official ``openai`` client; each request's kind and whether it ended as that kind should.

A leak usually lives on one of the less travelled paths (an error, a disconnect), so each kind gets
its share of the requests, not only the happy one.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import openai

# kind -> share of the requests
KINDS = {
    "stream": 0.30,  # streamed completion, read to [DONE]
    "chat": 0.15,  # non-streamed chat completion
    "adapter": 0.15,  # streamed, on a demo adapter (paged in from Redis)
    "n2-logprobs": 0.10,  # two choices with top-3 logprobs
    "hang-up": 0.10,  # streamed; the client closes the connection after two chunks
    "bad-value": 0.10,  # temperature -1: a 400
    "unknown-model": 0.10,  # a model nobody serves: a 404
}
EXPECTED_STATUS = {"bad-value": 400, "unknown-model": 404}


@dataclass
class Mix:
    clients: dict[str, openai.AsyncOpenAI]  # tenant -> client
    base: str  # the base model's id
    adapters: list[str]
    max_tokens: int
    sent: Counter[str] = field(default_factory=Counter)
    wrong: Counter[str] = field(default_factory=Counter)  # ended otherwise than its kind should
    examples: dict[str, str] = field(default_factory=dict)  # kind -> one wrong ending
    _tasks: set[asyncio.Task] = field(default_factory=set)

    async def run(self, rate: float, seconds: float, rng: random.Random) -> None:
        """Poisson arrivals at ``rate`` requests/s for ``seconds``, kinds and tenants drawn with
        ``rng``; returns once every request ended."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        kinds, weights = list(KINDS), list(KINDS.values())
        while loop.time() < end:
            kind = rng.choices(kinds, weights)[0]
            tenant = rng.choice(sorted(self.clients))
            task = asyncio.create_task(self.one(kind, tenant, rng.randrange(1 << 16)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(rng.expovariate(rate))
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def one(self, kind: str, tenant: str, salt: int) -> None:
        self.sent[kind] += 1
        client = self.clients[tenant]
        try:
            async with asyncio.timeout(120):
                ok = await self._send(kind, client, f"{tenant} request {salt}:", salt)
        except openai.APIStatusError as e:
            ok = e.status_code == EXPECTED_STATUS.get(kind)
            if not ok:
                self.examples.setdefault(kind, f"HTTP {e.status_code}: {e.message[:120]}")
        except Exception as e:  # a timeout, a dropped connection
            ok = False
            self.examples.setdefault(kind, f"{type(e).__name__}: {e}"[:160])
        if not ok:
            self.wrong[kind] += 1

    async def _send(self, kind: str, client: openai.AsyncOpenAI, prompt: str, salt: int) -> bool:
        n = self.max_tokens
        if kind == "chat":
            r = await client.chat.completions.create(
                model=self.base, messages=[{"role": "user", "content": prompt}], max_tokens=n
            )
            return bool(r.choices)
        if kind == "n2-logprobs":
            r = await client.completions.create(
                model=self.base, prompt=prompt, max_tokens=n, n=2, logprobs=3, temperature=0.8
            )
            return len(r.choices) == 2
        if kind in EXPECTED_STATUS:
            model = self.base if kind == "bad-value" else "no-such-model-anywhere"
            temperature = -1.0 if kind == "bad-value" else 0.0
            await client.completions.create(
                model=model, prompt=prompt, max_tokens=n, temperature=temperature
            )
            return False  # it should have failed
        model = self.adapters[salt % len(self.adapters)] if kind == "adapter" else self.base
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=n, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = 0
        async with stream:  # leaving it closes the connection: the server must notice
            async for _ in stream:
                chunks += 1
                if kind == "hang-up" and chunks == 2:
                    return True
        return chunks > 0
