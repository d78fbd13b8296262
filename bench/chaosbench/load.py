"""Open-loop streaming load for bench/chaos.py: Poisson arrivals per tenant, a few fixed prompts
each, each on the base model or one of the given adapters (``models``), greedy, through the
official ``openai`` client; every stream is classified.

The SSE body is read line by line (``with_streaming_response``) rather than through the client's
parsed stream, which hides whether ``[DONE]`` came: a stream ends *completed* (``[DONE]`` after
the same text as the uninterrupted greedy run of its prompt), *completed, text differs* (a
duplicated or missing token), *failed cleanly* (an error status with an OpenAI error body, or an
SSE error event), *truncated* (the body stopped with neither ``[DONE]`` nor an error; also an
error status without an OpenAI error body) or *hung* (nothing arrived for ``hang_s`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field

import openai

OUTCOMES = ("completed", "completed, text differs", "failed cleanly", "truncated", "hung")
PROMPTS = {
    "A": ["Tenant A asks about rivers:", "Tenant A wants a list of colours:", "A says hello and"],
    "B": ["Tenant B asks about mountains:", "Tenant B counts sheep:", "B writes a short poem"],
}


@dataclass
class Record:
    tenant: str
    prompt: int  # index into the tenant's (prompt, model) pairs (``Load.pairs``)
    start: float  # monotonic
    end: float | None = None
    outcome: str = "hung"
    message: str = ""  # why it did not complete
    request_id: str = ""
    text: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome not in OUTCOMES[:2]


def _error_message(text: str) -> str | None:
    """The message of an OpenAI error body (``{"error": {"message": ...}}``), else None."""
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None


@dataclass
class Load:
    clients: dict[str, openai.AsyncOpenAI]
    models: list[str]  # the base model, then the adapters to use
    max_tokens: int
    hang_s: float
    references: dict[tuple[str, int], str] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    _tasks: set[asyncio.Task] = field(default_factory=set)

    async def take_references(self) -> None:
        """The uninterrupted greedy text of every prompt (before any fault)."""
        keys = [(t, i) for t in PROMPTS for i in range(len(self.pairs(t)))]
        recs = await asyncio.gather(*(self.one(t, i, keep=False) for t, i in keys))
        for key, rec in zip(keys, recs, strict=True):
            if rec.outcome != "completed" or not rec.text:
                raise RuntimeError(f"reference run of {key} ended {rec.outcome}: {rec.message}")
            self.references[key] = rec.text

    async def run(self, rates: dict[str, float], seconds: float, rng: random.Random) -> None:
        """Arrivals for ``seconds``; then wait for every request to end."""
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await asyncio.gather(*(self._arrivals(t, r, stop, rng) for t, r in rates.items()))
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def batch(self, per_tenant: int) -> list[Record]:
        """``per_tenant`` concurrent requests of each tenant, cycling over its prompts."""
        works = [
            self.one(t, i % len(self.pairs(t)), keep=False)
            for t in PROMPTS
            for i in range(per_tenant)
        ]
        return list(await asyncio.gather(*works))

    async def _arrivals(
        self, tenant: str, rate: float, stop: asyncio.Event, rng: random.Random
    ) -> None:
        while not stop.is_set():
            task = asyncio.create_task(self.one(tenant, rng.randrange(len(self.pairs(tenant)))))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.expovariate(rate))

    def pairs(self, tenant: str) -> list[tuple[str, str]]:
        """The tenant's (prompt, model) pairs: every prompt on every model."""
        return [(p, m) for p in PROMPTS[tenant] for m in self.models]

    async def one(self, tenant: str, prompt: int, keep: bool = True) -> Record:
        rec = Record(tenant, prompt, time.monotonic())
        if keep:
            self.records.append(rec)
        try:
            await self._stream(rec)
        except TimeoutError:
            rec.outcome, rec.message = "hung", f"nothing arrived for {self.hang_s:g} s"
        except openai.APIStatusError as e:
            message = _error_message(e.response.text)
            rec.outcome = "failed cleanly" if message is not None else "truncated"
            body = message if message is not None else "(no OpenAI error body)"
            rec.message = f"HTTP {e.status_code}: {body}"
        except Exception as e:  # the connection dropped mid-body, or a body we cannot parse
            rec.outcome, rec.message = "truncated", f"{type(e).__name__}: {e}"
        finally:
            rec.end = time.monotonic()
        return rec

    async def _stream(self, rec: Record) -> None:
        loop = asyncio.get_running_loop()
        pieces: list[str] = []
        done, error = False, None
        prompt, model = self.pairs(rec.tenant)[rec.prompt]
        async with asyncio.timeout(self.hang_s) as watchdog:
            async with self.clients[rec.tenant].completions.with_streaming_response.create(
                model=model,
                prompt=prompt,
                max_tokens=self.max_tokens,
                temperature=0.0,
                stream=True,
                extra_body={"ignore_eos": True},
            ) as response:
                async for line in response.iter_lines():
                    watchdog.reschedule(loop.time() + self.hang_s)
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    if obj.get("error") is not None:
                        error = _error_message(data) or f"unreadable error event: {data[:120]}"
                        continue
                    rec.request_id = rec.request_id or obj.get("id", "")
                    pieces += [c.get("text") or "" for c in obj.get("choices") or []]
        rec.text = "".join(pieces)
        if error is not None:
            rec.outcome, rec.message = "failed cleanly", f"SSE error event: {error}"
        elif not done:
            rec.outcome, rec.message = "truncated", "the body ended without [DONE] or an error"
        elif rec.text == self.references.get((rec.tenant, rec.prompt), rec.text):
            rec.outcome = "completed"
        else:
            rec.outcome = "completed, text differs"
            rec.message = f"text differs from the uninterrupted run of {rec.tenant}{rec.prompt}"
