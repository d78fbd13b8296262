"""A K/V hand-over across a connection that drops (a NATS node dies under it).

* ``Bus.flush_delivered`` answers at once when the connection drops during the flush: nats-py
  loses the flush's PING with the connection and would wait out its whole 10 s timeout.
* The prefill side begins the hand-over again when its flush was not confirmed; the decode worker
  replaces the partial transfer, or answers that the request already runs there (then the first
  try's chunks did arrive, and the hand-over is done).
* The decode side gives its pending transfers a short idle limit once its own connection dropped:
  chunks in flight through it are gone, so a stalled transfer fails in seconds, not after
  ``--kv-timeout``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import torch

from loraplex import SamplingParams
from loraplex.bus import Bus, RawMessage
from loraplex.bus_memory import MemoryBus, MemoryHub
from loraplex.engine.outputs import KVHandoff
from loraplex.protocol import (
    KVBegin,
    KVChunk,
    KVReply,
    RequestProgress,
    Subjects,
    SubmitRequest,
    decode,
    encode,
)
from loraplex.tooling.servers import start_nats
from loraplex.worker.active import Active, ActiveTable
from loraplex.worker.inbox import Inbox
from loraplex.worker.kv_sender import KVSender
from loraplex.worker.kv_transfer import ALREADY_RUNS
from loraplex.worker.publish import Publisher
from tests.test_kv_begin_again import _begin
from tests.test_kv_transfer import _decode_worker, demo  # noqa: F401  (the fixture)


async def _stopped(pid: int, timeout: float = 5.0) -> None:
    """Until the process is in the stopped state (``T`` in /proc/<pid>/stat)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        await asyncio.sleep(0.005)


def test_a_flush_cut_by_a_dying_server_answers_at_once(tmp_path) -> None:
    server = start_nats(tmp_path / "nats")

    async def run() -> tuple[bool, bool, float]:
        bus = await Bus.connect(server.url, "test-flush")
        await bus.publish_raw("x", b"1")
        healthy = await bus.flush_delivered()
        os.kill(server.proc.pid, signal.SIGSTOP)  # the PING goes out and no PONG comes back
        await _stopped(server.proc.pid)  # the signal is asynchronous: a busy box may answer first
        flushing = asyncio.ensure_future(bus.flush_delivered())
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        os.kill(server.proc.pid, signal.SIGKILL)  # now the socket closes: a disconnect
        delivered = await asyncio.wait_for(flushing, 5.0)
        took = time.monotonic() - t0
        await bus.nc.close()
        return healthy, delivered, took

    try:
        healthy, delivered, took = asyncio.run(run())
    finally:
        server.stop()
    assert healthy and not delivered
    assert took < 3.0  # not nats-py's 10 s flush timeout


class _DropOnce(MemoryBus):
    """An in-memory bus whose first flush reports the connection dropped."""

    drops = 1

    async def flush_delivered(self) -> bool:
        await self.flush()
        if self.drops:
            self.drops -= 1
            self.disconnects += 1
            return False
        return True


def _ship(answers: list[KVReply]) -> tuple[list[str], list[str]]:
    """Ship one hand-over through ``_DropOnce`` to a decode stand-in that answers the begins
    with ``answers`` in turn; what the stand-in heard, and the progress the scheduler got."""

    async def run() -> tuple[list[str], list[str]]:
        hub = MemoryHub()
        prefill = _DropOnce(hub, "prefill")
        decode_side, scheduler = hub.connect("decode"), hub.connect("scheduler")
        heard: list[str] = []
        progress: list[str] = []

        async def on_kv(raw: RawMessage) -> None:
            msg = decode(raw.data, (KVBegin, KVChunk))
            if isinstance(msg, KVBegin):
                heard.append("begin")
                await raw.respond(encode(answers[len([h for h in heard if h == "begin"]) - 1]))
            else:
                heard.append(f"chunk{msg.index}")

        async def on_progress(p: RequestProgress) -> None:
            progress.append(p.event)

        await decode_side.subscribe_raw(Subjects.kv("decode-z"), on_kv)
        await scheduler.subscribe(Subjects.USAGE, on_progress, RequestProgress)
        inbox = Inbox()
        sender = KVSender(prefill, "prefill-z", 5.0, Publisher(prefill, "prefill-z"), inbox,
                          ActiveTable(None))  # type: ignore[arg-type]  # fmt: skip
        sub = SubmitRequest("drop", "t", "gw", list(range(8)), SamplingParams(max_tokens=4))
        req = Active(sub, None, "decode-z")
        payload = torch.zeros(1, 2, 2, 4, 1, 8)  # [layers, 2, blocks, block_size, heads, dim]
        await sender.ship(req, KVHandoff(payload, first_token=3, num_tokens=8))
        for _ in range(5):
            await asyncio.sleep(0)
        return heard, progress

    return asyncio.run(run())


def test_a_hand_over_whose_connection_dropped_begins_again() -> None:
    heard, progress = _ship([KVReply("drop", True), KVReply("drop", True)])
    assert heard == ["begin", "chunk0", "begin", "chunk0"]
    assert progress == ["handoff"]


def test_a_hand_over_begun_again_that_already_runs_is_done() -> None:
    heard, progress = _ship([KVReply("drop", True), KVReply("drop", False, ALREADY_RUNS)])
    assert heard == ["begin", "chunk0", "begin"]
    assert progress == ["handoff"]


def test_a_refusal_on_the_first_try_still_fails_the_hand_over() -> None:
    heard, progress = _ship([KVReply("drop", False, ALREADY_RUNS)])
    assert heard == ["begin"] and progress == ["failed"]


def test_a_decode_worker_whose_connection_dropped_expires_stalled_transfers_soon(
    demo,  # noqa: F811
    tmp_path,
) -> None:
    server = start_nats(tmp_path / "nats")

    async def run() -> tuple[int, float | None]:
        worker, bus = await _decode_worker(demo, server.url, kv_timeout_s=30.0)
        raw = await bus.nc.request(Subjects.kv(worker.id), encode(_begin("stalls")), timeout=10)
        assert decode(raw.data, KVReply).accepted
        reserved = worker.engine.allocator.num_used
        worker.bus._lost_connection()  # what nats-py's disconnected callback does
        t0, freed_after = time.monotonic(), None
        while time.monotonic() - t0 < 10:
            await asyncio.sleep(0.1)
            if worker.engine.allocator.num_used == 0:
                freed_after = time.monotonic() - t0
                break
        await worker.stop()
        await bus.close()
        return reserved, freed_after

    try:
        reserved, freed_after = asyncio.run(run())
    finally:
        server.stop()
    assert reserved == 10
    assert freed_after is not None and freed_after < 5.0  # not the 30 s --kv-timeout
