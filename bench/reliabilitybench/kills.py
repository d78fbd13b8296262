"""Worker-kill trials: start streams, SIGKILL a worker mid-stream, classify every stream.

Each trial starts ``streams`` concurrent streaming completions (the two tenants alternating), waits
until they are under way (all have a token for a decode kill; the first one for a prefill kill, so
the rest are queued or in prefill), then SIGKILLs the worker.  A stream ends *completed* (its
tokens, then ``[DONE]``, the same text as the uninterrupted greedy run of its prompt), *completed,
text differs* (a repeated or missing token), *failed cleanly* (an error status with an OpenAI error body, or an SSE
error event then ``[DONE]``), *truncated* (the body stopped without either) or *hung* (no end
within ``hang_s`` of the kill).  *Migrated* counts the requests the scheduler placed again after
tokens had streamed (its "migrating" log lines).  Before the next trial the supervisor must have restarted the worker
and its heartbeat must be back; the time from the kill to that heartbeat is recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import time
from dataclasses import dataclass, field

import httpx

from tests.hostile.bus_watch import BusWatch
from tests.hostile.harness import ALPHA, BETA, HostileStack, auth

OUTCOMES = ("completed", "completed, text differs", "failed cleanly", "truncated", "hung")


@dataclass
class KillTally:
    role: str
    trials: int = 0
    streams: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    back_s: list[float] = field(default_factory=list)  # kill -> the new worker's first heartbeat
    migrated: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def back_median_s(self) -> float | None:
        return statistics.median(self.back_s) if self.back_s else None


@dataclass
class StreamRun:
    tenant: str
    expected: str = ""  # the uninterrupted run's text
    first_token: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: str = "hung"
    text: list[str] = field(default_factory=list)


async def _stream(client: httpx.AsyncClient, run: StreamRun, body: dict) -> None:  # type: ignore[type-arg]
    try:
        async with client.stream(
            "POST", "/v1/completions", json=body, headers=auth(run.tenant)
        ) as r:
            if r.status_code != 200:
                text = await r.aread()
                run.outcome = "failed cleanly" if _is_error_body(text) else "truncated"
                return
            error, done = False, False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                elif '"error"' in data:
                    error = True
                else:
                    run.text.append(json.loads(data)["choices"][0]["text"])
                    run.first_token.set()
            if done and not error and "".join(run.text) != run.expected:
                run.outcome = "completed, text differs"
            else:
                run.outcome = ("failed cleanly" if error else "completed") if done else "truncated"
    except httpx.TransportError:
        run.outcome = "truncated"
    finally:
        run.first_token.set()  # never wait on a stream that ended


def _body(hs: HostileStack, max_tokens: int) -> dict:  # type: ignore[type-arg]
    return {"model": hs.model_id, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}


async def _uninterrupted(client: httpx.AsyncClient, body: dict, i: int) -> str:  # type: ignore[type-arg]
    """The text of trial prompt ``i`` with no kill (greedy: the text every stream must show)."""
    r = await client.post(
        "/v1/completions", json={**body, "prompt": f"trial {i} says"}, headers=auth(ALPHA)
    )
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


def _migrations(hs: HostileStack) -> int:
    log = hs.stack.run_dir / "scheduler.log"
    return log.read_text(errors="replace").count("migrating ") if log.exists() else 0


def _is_error_body(text: bytes) -> bool:
    try:
        err = json.loads(text)["error"]
        return isinstance(err["message"], str)
    except (ValueError, KeyError, TypeError):
        return False


async def one_trial(
    hs: HostileStack, bus: BusWatch, worker: str, streams: int, max_tokens: int, hang_s: float
) -> tuple[list[str], float | None]:
    """Outcomes of the trial's streams, and seconds until the killed worker's heartbeat is back."""
    body = _body(hs, max_tokens)
    async with httpx.AsyncClient(base_url=hs.base, timeout=None) as client:
        expected = await asyncio.gather(*(_uninterrupted(client, body, i) for i in range(streams)))
    runs = [StreamRun(ALPHA if i % 2 else BETA, expected[i]) for i in range(streams)]
    body["stream"] = True
    async with httpx.AsyncClient(base_url=hs.base, timeout=None) as client:
        tasks = [
            asyncio.create_task(_stream(client, r, {**body, "prompt": f"trial {i} says"}))
            for i, r in enumerate(runs)
        ]
        # prefill: kill as soon as one stream has a token, while the others queue or prefill
        wait_for = runs if worker.startswith("decode") else runs[:1]
        await asyncio.wait_for(asyncio.gather(*(r.first_token.wait() for r in wait_for)), 60)
        old = hs.stack.proc(worker)
        os.kill(old.pid, signal.SIGKILL)
        killed = time.monotonic()
        _, pending = await asyncio.wait(tasks, timeout=hang_s)
        for task in pending:  # hung: stop waiting, leave the outcome at "hung"
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    back = await _worker_back(hs, bus, worker, old.pid, killed)
    return [r.outcome for r in runs], back


async def _worker_back(
    hs: HostileStack, bus: BusWatch, worker: str, old_pid: int, killed: float, timeout: float = 180
) -> float | None:
    """Seconds from the kill until a new process of ``worker`` sends heartbeats, or None."""
    deadline = killed + timeout
    while time.monotonic() < deadline:
        svc = hs.stack.service(worker)
        new = svc.proc is not None and svc.proc.pid != old_pid and svc.proc.poll() is None
        if new and bus.heard_from_since(worker, svc.started_at):
            return bus.heartbeats[worker][0] - killed
        await asyncio.sleep(0.1)
    return None


async def run_kills(
    hs: HostileStack,
    workers: list[str],
    trials: int,
    streams: int,
    max_tokens: int,
    hang_s: float,
) -> KillTally:
    """``trials`` kills, cycling over ``workers`` (all of one role)."""
    tally = KillTally(workers[0].rsplit("-", 1)[0])
    async with BusWatch.connect(hs.stack.urls["nats"]) as bus:
        for i in range(trials):
            worker = workers[i % len(workers)]
            before = _migrations(hs)
            outcomes, back = await one_trial(hs, bus, worker, streams, max_tokens, hang_s)
            tally.migrated += _migrations(hs) - before
            tally.trials += 1
            for outcome in outcomes:
                tally.streams[outcome] += 1
            if back is None:
                tally.notes.append(f"trial {i}: {worker} did not come back")
                break
            tally.back_s.append(back)
            if not await asyncio.to_thread(hs.recover):
                tally.notes.append(f"trial {i}: the stack did not serve both tenants again")
                break
    return tally
