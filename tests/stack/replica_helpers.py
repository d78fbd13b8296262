"""Scheduler replicas under test: real scheduler processes, a worker that generates by fiat, and a
gateway made of the real gateway's ``Resubmitter`` and ``StreamRouter`` on a real NATS.

``TokenWorker`` behaves as a colocated worker does on the bus: heartbeats listing the requests it
holds, the epoch check and duplicate guard of ``worker/control.py``, one token per ``step_s`` per
request (progress with token ids before each ``TokenDelta``), a finish report.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis

from loraplex.bus import Bus
from loraplex.gateway.resubmit import Resubmitter
from loraplex.gateway.streams import StreamRouter
from loraplex.protocol import (
    CancelRequest,
    PrefetchAdapter,
    PrefillAssign,
    RequestError,
    RequestProgress,
    SchedulerStats,
    Subjects,
    SubmitRequest,
    TokenDelta,
    WorkerHeartbeat,
)
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.settings import build_parser
from loraplex.terminal import serve_stream


def token_of(request_id: str, index: int) -> int:
    """The made-up token a request has at ``index`` (so a stream can be checked exactly)."""
    return (sum(map(ord, request_id)) * 31 + index) % 1000


class TokenWorker:
    def __init__(self, bus: Bus, worker_id: str, slots: int, step_s: float) -> None:
        self.bus, self.id, self.slots, self.step_s = bus, worker_id, slots, step_s
        self.epoch = 0
        self.active: dict[str, asyncio.Task] = {}
        self.runs: Counter[str] = Counter()  # request id -> times it started here
        self.admitted: list[tuple[float, str, int]] = []  # (time, tenant, epoch)
        self.stale = 0  # assignments ignored: older epoch
        self.resumed: dict[str, list[int]] = {}  # request id -> the tokens it was migrated with
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.bus.subscribe(Subjects.worker(self.id), self._on_msg)
        self._tasks.append(asyncio.create_task(self._beat()))

    async def stop(self) -> None:
        for t in [*self._tasks, *self.active.values()]:
            t.cancel()

    async def _beat(self) -> None:
        while True:
            hb = WorkerHeartbeat(
                worker_id=self.id, role="both", free_blocks=4096, total_blocks=4096, block_size=16,
                running=len(self.active), waiting=0, max_num_seqs=self.slots, ts=time.time(),
                active=list(self.active),
            )  # fmt: skip
            with contextlib.suppress(Exception):
                await self.bus.publish(Subjects.HEARTBEAT, hb)
            await asyncio.sleep(0.2)

    async def _on_msg(self, msg: PrefillAssign | CancelRequest | PrefetchAdapter) -> None:
        if isinstance(msg, CancelRequest):
            task = self.active.pop(msg.request_id, None)
            if task is not None:
                task.cancel()
        elif isinstance(msg, PrefillAssign):
            if msg.epoch < self.epoch:
                self.stale += 1
                return
            self.epoch = msg.epoch
            rid = msg.request.request_id
            if rid in self.active:
                return
            self.runs[rid] += 1
            self.admitted.append((time.monotonic(), msg.request.tenant, msg.epoch))
            if msg.generated:
                self.resumed[rid] = list(msg.generated)
            self.active[rid] = asyncio.create_task(self._generate(msg.request, msg.generated))

    async def _generate(self, sub: SubmitRequest, generated: list[int]) -> None:
        """Tokens from ``len(generated)`` on (a migrated request's are replayed first)."""
        n, rid = sub.sampling.max_tokens, sub.request_id
        common = {"request_id": rid, "tenant": sub.tenant, "worker_id": self.id}
        try:
            if generated:
                await self.bus.publish(Subjects.stream(sub.gateway_id), TokenDelta(
                    rid, list(generated), completion_tokens=len(generated),
                    prompt_tokens=len(sub.prompt_token_ids),
                ))  # fmt: skip
            for i in range(len(generated), n):
                await asyncio.sleep(self.step_s)
                tok, last = token_of(rid, i), i == n - 1
                await self.bus.publish(Subjects.USAGE, RequestProgress(
                    event="tokens", new_tokens=1, completion_tokens=i + 1, token_ids=[tok],
                    prompt_tokens=len(sub.prompt_token_ids), **common,
                ))  # fmt: skip
                await self.bus.publish(Subjects.stream(sub.gateway_id), TokenDelta(
                    rid, [tok], finish_reason="length" if last else None,
                    completion_tokens=i + 1, prompt_tokens=len(sub.prompt_token_ids),
                ))  # fmt: skip
            await self.bus.publish(Subjects.USAGE, RequestProgress(
                event="finished", completion_tokens=n, prompt_tokens=len(sub.prompt_token_ids),
                **common,
            ))  # fmt: skip
        finally:
            self.active.pop(rid, None)


@dataclass
class Stream:
    tenant: str
    tokens: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done_at: float | None = None


class FakeGateway:
    """Submits through the real ``Resubmitter`` and collects every request's stream."""

    def __init__(self, bus: Bus, gateway_id: str) -> None:
        self.bus, self.id = bus, gateway_id
        self.router = StreamRouter()
        self.resubmitter = Resubmitter(bus, self.router, timeout_s=10.0)
        self.streams: dict[str, Stream] = {}
        self._readers: list[asyncio.Task] = []

    async def start(self) -> None:
        await serve_stream(self.bus, self.id, self.router.dispatch)
        await self.resubmitter.ensure_subscribed()

    async def submit(self, rid: str, tenant: str, prompt: int, tokens: int) -> None:
        sub = SubmitRequest(
            rid, tenant, self.id, list(range(prompt)), SamplingParams(max_tokens=tokens)
        )
        queue = self.router.open(rid)
        self.resubmitter.track(sub)
        reply = await self.resubmitter.submit(sub)
        assert reply.accepted, reply
        s = self.streams[rid] = Stream(tenant)
        self.resubmitter.attach(rid, lambda: len(s.tokens), reply.epoch, lambda: list(s.tokens))
        self._readers.append(asyncio.create_task(self._read(rid, queue, s)))

    async def _read(self, rid: str, queue: asyncio.Queue, s: Stream) -> None:
        while True:
            msg = await queue.get()
            if isinstance(msg, RequestError):
                s.errors.append(msg.message)
                break
            assert isinstance(msg, TokenDelta)
            first = msg.completion_tokens - len(msg.token_ids)
            for i, tok in enumerate(msg.token_ids):  # keep what a gateway keeps: by index
                if first + i == len(s.tokens):
                    s.tokens.append(tok)
            if msg.finish_reason is not None:
                break
        s.done_at = time.monotonic()
        self.resubmitter.forget(rid)
        self.router.close(rid)

    async def wait_done(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*self._readers), timeout)


class StatsWatcher:
    """The fairness counters each scheduler publishes (only the leader does)."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}
        self.history: list[tuple[float, dict[str, float]]] = []

    async def on_stats(self, s: SchedulerStats) -> None:
        self.latest = dict(s.counters)
        self.history.append((time.monotonic(), dict(s.counters)))


def start_scheduler(nats_url: str, redis_url: str, prefix: str, name: str, log: Path,
                    *extra: str) -> subprocess.Popen:  # fmt: skip
    own = build_parser().format_help()  # several replicas on one host: no fixed listener port
    extra = (*extra, *(["--metrics-port", "0"] if "--metrics-port" in own else []))
    argv = [
        sys.executable, "-m", "loraplex.scheduler", "--nats-url", nats_url, "--redis-url",
        redis_url, "--redis-prefix", prefix, "--scheduler-id", name, *extra,
    ]  # fmt: skip
    out = open(log, "ab")  # noqa: SIM115 - the child writes to it
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


async def wait_log(log: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.05)


def service_by_epoch(admitted: list[tuple[float, str, int]]) -> dict[int, Counter[str]]:
    """Admissions per tenant under each leader epoch."""
    out: dict[int, Counter[str]] = defaultdict(Counter)
    for _, tenant, epoch in admitted:
        out[epoch][tenant] += 1
    return out


def stop_schedulers(procs: list[subprocess.Popen], redis_url: str, prefix: str) -> None:
    """SIGTERM the scheduler processes still running, wait for all, drop their keys in Redis."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(15)
    with redis.Redis.from_url(redis_url) as r:
        keys = r.keys(prefix + ":*")
        if keys:
            r.delete(*keys)
