"""The live path: client -> (gateway ->) NATS -> scheduler -> a fake worker that answers at once.

Real processes: ``nats-server``, ``python -m loraplex.scheduler`` and (for the HTTP path)
``python -m loraplex.gateway`` on the tiny demo model's tokenizer.  The fake workers are bus
clients in this process: they heart-beat as colocated workers with room for everything and answer
each ``PrefillAssign`` at once with one token (progress "finished" to the scheduler, the
``TokenDelta`` to the gateway), so what is measured is the scheduling path, not a model.

Two figures, submits per second with ``concurrency`` requests in flight:

* ``nats``: the bench sends ``SubmitRequest`` on the SUBMIT subject itself (as a gateway does) and
  waits for the request's one token on its own stream subject: NATS + scheduler alone;
* ``http``: the official ``openai`` client's requests (``max_tokens=1``) through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from loraplex.acked import AckedSender
from loraplex.assignments import serve_control
from loraplex.bus import Bus
from loraplex.prefix_keys import prefix_keys
from loraplex.protocol import (
    PrefillAssign,
    RequestProgress,
    Subjects,
    SubmitReply,
    SubmitRequest,
    TokenDelta,
    WorkerHeartbeat,
)
from loraplex.sampling_params import SamplingParams
from loraplex.terminal import serve_stream
from loraplex.tooling.ports import free_port
from loraplex.tooling.servers import start_nats, start_redis

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LiveRow:
    path: str  # "nats" | "http"
    concurrency: int
    submits: int
    seconds: float
    errors: int
    # process -> (CPU seconds used, seconds runnable but waiting for a CPU), per wall second
    cpu: dict[str, tuple[float, float]]

    @property
    def per_s(self) -> float:
        return self.submits / self.seconds if self.seconds > 0 else 0.0


# How the fake workers take assignments and send last messages: "acked" as a real worker does
# (both acknowledged: loraplex/assignments.py, loraplex/terminal.py), "plain-assign" with
# assignments published, "plain" with both published (the protocol before either).
ACK_MODES = ("acked", "plain-assign", "plain")


class FakeWorker:
    """A colocated worker that finishes every assignment at once with one token."""

    def __init__(self, bus: Bus, worker_id: str, mode: str = "acked") -> None:
        self.bus, self.id = bus, worker_id
        self.terminal = AckedSender(bus)
        self.acknowledged = mode != "plain"  # last messages
        self.acks_assignments = mode == "acked"
        self.done = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await serve_control(self.bus, self.id, self._on_assign, PrefillAssign)  # type: ignore[arg-type]
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            hb = WorkerHeartbeat(
                self.id, "both", 1 << 20, 1 << 20, 16, 0, 0, 4096, ts=time.time(),
                acks_assignments=self.acks_assignments,
            )  # fmt: skip
            await self.bus.publish(Subjects.HEARTBEAT, hb)
            await asyncio.sleep(0.25)

    async def _on_assign(self, m: PrefillAssign) -> None:
        sub = m.request
        n = len(sub.prompt_token_ids)
        done = RequestProgress(
            sub.request_id, sub.tenant, self.id, "finished", 1, n, 1, token_ids=[7]
        )
        last = TokenDelta(sub.request_id, [7], "x", "length", prompt_tokens=n, completion_tokens=1)
        if self.acknowledged:  # as a real worker sends them (loraplex.terminal)
            self.terminal.send(Subjects.USAGE, done)
            self.terminal.send(Subjects.stream(sub.gateway_id), last)
        else:
            await self.bus.publish(Subjects.USAGE, done)
            await self.bus.publish(Subjects.stream(sub.gateway_id), last)
        self.done += 1

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_seconds(pid: int) -> float:
    """Seconds the process's threads waited for a CPU while runnable (Linux schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


class CpuMeter:
    """Per named process over a wall-clock interval: CPU used, and time spent runnable but
    waiting for a CPU (other load on the box), both per wall second."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = time.perf_counter()
        self.c0 = {k: (cpu_seconds(p), runqueue_seconds(p)) for k, p in pids.items()}

    def shares(self) -> dict[str, tuple[float, float]]:
        dt = time.perf_counter() - self.t0
        out = {}
        for k, p in self.pids.items():
            c0, w0 = self.c0[k]
            out[k] = (
                round((cpu_seconds(p) - c0) / dt, 2),
                round((runqueue_seconds(p) - w0) / dt, 2),
            )
        return out


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _servers(workdir: Path, redis: bool) -> Iterator[tuple[str, subprocess.Popen, int]]:
    """nats-server and a scheduler; with ``redis``, a redis-server too and the scheduler runs as
    a replica (leader lease, fenced counter saves, a ledger write before every assignment)."""
    nats = start_nats(workdir / "nats")
    red = start_redis(workdir / "redis", appendonly=False) if redis else None
    flags = ["--redis-url", red.url] if red else []
    sched = _spawn(
        ["-m", "loraplex.scheduler", "--nats-url", nats.url, "--max-queue", "100000",
         "--max-queue-per-tenant", "100000", "--metrics-port", "0", *flags],
        workdir / "scheduler.log",
    )  # fmt: skip
    try:
        yield nats.url, sched, nats.proc.pid
    finally:
        _stop(sched)
        if red is not None:
            red.stop()
        nats.stop()


async def serve_fake_workers(nats_url: str, n: int, mode: str = "acked") -> None:
    """Run ``n`` fake workers until killed (the bench starts this in its own process)."""
    bus = await Bus.connect(nats_url, "fake-workers")
    workers = [FakeWorker(bus, f"fake-{i}", mode) for i in range(n)]
    for w in workers:
        await w.start()
    await bus.flush()
    await asyncio.Event().wait()


async def _nats_path(
    nats_url: str, concurrency: int, seconds: float, pids: dict[str, int]
) -> LiveRow:
    """SUBMIT straight on the bus; a request is done when its token reaches our stream."""
    bus = await Bus.connect(nats_url, "bench-gateway")
    gw = "benchgw"
    waiting: dict[str, asyncio.Future] = {}

    async def on_delta(m: TokenDelta) -> None:
        fut = waiting.pop(m.request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    await serve_stream(bus, gw, on_delta, TokenDelta)
    await bus.flush()
    counter = iter(range(1 << 62))
    done = errors = 0
    stop_at = time.perf_counter() + seconds
    prompt = list(range(1, 65))
    keys = prefix_keys(None, prompt)  # what a gateway sends with the prompt

    async def client(k: int) -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            rid = f"b{next(counter)}"
            fut = asyncio.get_running_loop().create_future()
            waiting[rid] = fut
            sub = SubmitRequest(
                rid, f"t{k}", gw, prompt, SamplingParams(max_tokens=1), prefix_keys=keys
            )
            try:
                reply = await bus.request(Subjects.SUBMIT, sub, SubmitReply, timeout=10)
                if not reply.accepted:
                    raise RuntimeError(reply.message)
                await asyncio.wait_for(fut, 10)
                done += 1
            except Exception:
                waiting.pop(rid, None)
                errors += 1

    t0 = time.perf_counter()
    meter = CpuMeter(pids)
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    row = LiveRow("nats", concurrency, done, time.perf_counter() - t0, errors, meter.shares())
    await bus.close()
    return row


async def _http_path(
    base: str, model: str, concurrency: int, seconds: float, pids: dict[str, int]
) -> LiveRow:
    import openai

    client = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30)
    done = errors = 0
    stop_at = time.perf_counter() + seconds
    prompt = list(range(1, 65))

    async def one() -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            try:
                await client.completions.create(model=model, prompt=prompt, max_tokens=1)
                done += 1
            except Exception:
                errors += 1

    t0 = time.perf_counter()
    meter = CpuMeter(pids)
    await asyncio.gather(*(one() for _ in range(concurrency)))
    row = LiveRow("http", concurrency, done, time.perf_counter() - t0, errors, meter.shares())
    await client.close()
    return row


def _wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"gateway not ready: {log.read_text()[-2000:]}")


def run_live(
    concurrency: int = 64,
    seconds: float = 10.0,
    workers: int = 4,
    http: bool = True,
    redis: bool = False,
    mode: str = "acked",
) -> list[LiveRow]:
    """Both paths against one scheduler; the HTTP path's gateway serves the demo tokenizer.
    With ``redis`` the scheduler runs as a replica (rows' path gets a ``+redis`` suffix).
    ``mode`` (``ACK_MODES``): what the fake workers acknowledge."""
    rows: list[LiveRow] = []
    with tempfile.TemporaryDirectory(prefix="schedbench-") as tmp:
        work = Path(tmp)
        with _servers(work, redis) as (nats_url, _sched, nats_pid):
            fakes = _spawn(
                [__file__, "--fake-workers", str(workers), "--nats-url", nats_url, mode],
                work / "fakes.log",
            )
            pids = {
                "scheduler": _sched.pid,
                "nats-server": nats_pid,
                "fake workers": fakes.pid,
                "bench client": os.getpid(),
            }

            async def main() -> None:
                await asyncio.sleep(2.0)  # the scheduler has heard the heartbeats
                await _nats_path(nats_url, concurrency, 1.0, pids)  # warm-up
                got = [await _nats_path(nats_url, concurrency, seconds, pids)]
                if http:
                    assert gateway is not None
                    hp = {**pids, "gateway": gateway.pid}
                    got.append(await _http_path(base, "demo", concurrency, seconds, hp))
                suffix = "+redis" if redis else ""
                rows.extend(replace(r, path=r.path + suffix) for r in got)

            base = ""
            gateway = None
            if http:
                from loraplex.tooling.demo.demo_model import write_demo_model

                model_dir = work / "model"
                write_demo_model(model_dir, num_adapters=0)
                port = free_port()
                log = work / "gateway.log"
                gateway = _spawn(
                    ["-m", "loraplex.gateway", "--port", str(port), "--nats-url", nats_url,
                     "--model", str(model_dir), "--model-id", "demo", "--metrics-port", "0"],
                    log,
                )  # fmt: skip
                base = f"http://127.0.0.1:{port}/v1"
                _wait_http(f"http://127.0.0.1:{port}/health", gateway, log)
            try:
                asyncio.run(main())
            finally:
                _stop(fakes)
                if gateway is not None:
                    _stop(gateway)
    return rows


if __name__ == "__main__":
    # python bench/schedbench/live.py --fake-workers N --nats-url URL MODE: the fake workers'
    # process (MODE one of ACK_MODES)
    # python bench/schedbench/live.py: a quick look at both paths
    if len(sys.argv) == 6 and sys.argv[1] == "--fake-workers":
        asyncio.run(serve_fake_workers(sys.argv[4], int(sys.argv[2]), sys.argv[5]))
    else:
        for r in run_live(seconds=5.0):
            print(r, f"{r.per_s:.0f}/s")
