"""Open-loop load for bench/failover.py: Poisson arrivals per tenant, each a streaming completion
through the official ``openai`` client; every token's arrival time is kept."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import openai


@dataclass
class Record:
    tenant: str
    start: float
    request_id: str = ""
    token_times: list[float] = field(default_factory=list)
    end: float | None = None
    error: str = ""  # empty: completed

    def active_at(self, t: float) -> bool:
        return self.start <= t and (self.end is None or self.end > t)


@dataclass
class Load:
    clients: dict[str, openai.AsyncOpenAI]
    rates: dict[str, float]  # tenant -> requests per second
    model: str
    max_tokens: int
    records: list[Record] = field(default_factory=list)
    _tasks: set[asyncio.Task] = field(default_factory=set)

    async def run(self, stop: asyncio.Event, seed: int = 0) -> None:
        """Arrivals until ``stop``; then wait for every request to end."""
        rng = random.Random(seed)
        await asyncio.gather(*(self._arrivals(t, stop, rng) for t in self.rates))
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _arrivals(self, tenant: str, stop: asyncio.Event, rng: random.Random) -> None:
        while not stop.is_set():
            task = asyncio.create_task(self._one(tenant))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.expovariate(self.rates[tenant]))

    async def _one(self, tenant: str) -> None:
        rec = Record(tenant, time.monotonic())
        self.records.append(rec)
        try:
            stream = await self.clients[tenant].completions.create(
                model=self.model,
                prompt=f"Tenant {tenant} asks question {len(self.records)}:",
                max_tokens=self.max_tokens,
                temperature=0.0,
                extra_body={"ignore_eos": True},
                stream=True,
            )
            async for chunk in stream:
                rec.request_id = rec.request_id or chunk.id
                if chunk.choices and chunk.choices[0].text:
                    rec.token_times.append(time.monotonic())
        except Exception as e:  # any failure the client sees counts
            rec.error = f"{type(e).__name__}: {e}"[:200]
        finally:
            rec.end = time.monotonic()
