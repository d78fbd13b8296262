"""Request migration on a live stack: the decode worker serving a stream is SIGKILLed mid-stream,
the scheduler places the request again (prompt + tokens so far prefilled on a live worker), and the
client's stream, through the official ``openai`` client, equals the uninterrupted run token for
token, greedy and seeded; the same for a colocated worker (``--role both``)."""

from __future__ import annotations

import asyncio
import threading
import time

import openai
import pytest

from loraplex.bus import Bus
from loraplex.protocol import Subjects, WorkerHeartbeat
from tests.stack.conftest import launch

MAX_TOKENS = 400


class HeartbeatWatch:
    """The request ids each worker's latest heartbeat lists, read from the stack's NATS in a
    thread of its own (the ``openai`` client below is synchronous)."""

    def __init__(self, nats_url: str) -> None:
        self.active: dict[str, tuple[float, list[str]]] = {}  # worker -> (when, request ids)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(nats_url)))
        self._thread.start()
        assert self._ready.wait(30), "could not subscribe to heartbeats"

    async def _run(self, nats_url: str) -> None:
        bus = await Bus.connect(nats_url, "test-heartbeats")

        async def on_hb(hb: WorkerHeartbeat) -> None:
            self.active[hb.worker_id] = (time.monotonic(), list(hb.active or []))

        await bus.subscribe(Subjects.HEARTBEAT, on_hb, WorkerHeartbeat)
        await bus.flush()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await bus.close()

    def holder(self, prefix: str, request_id: str, timeout: float = 30.0) -> str:
        """The one live worker named ``prefix``-something whose latest heartbeat lists
        ``request_id`` (any busy worker would do only on an idle host: under load a worker's
        last heartbeat may still list the request before, which another worker now follows)."""
        deadline = time.monotonic() + timeout
        while (now := time.monotonic()) < deadline:
            busy = [
                w
                for w, (seen, ids) in list(self.active.items())
                if w.startswith(prefix) and request_id in ids and now - seen < 1.5
            ]
            if len(busy) == 1:
                return busy[0]
            time.sleep(0.05)
        raise AssertionError(f"no single {prefix} worker holds {request_id}: {self.active}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = launch(
        tmp_path_factory, "migration", ["--prefill-workers", "1", "--decode-workers", "2"]
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def watch(stack):
    w = HeartbeatWatch(stack.urls["nats"])
    yield w
    w.close()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(
        base_url=stack.urls["gateway"] + "/v1", api_key="x", max_retries=0, timeout=120
    )


def _migrations(stack) -> int:  # type: ignore[no-untyped-def]
    return (stack.run_dir / "scheduler.log").read_text(errors="replace").count("migrating ")


def _stream(client, model: str, kill=None, **sampling) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """The streamed text and completion token count; ``kill(request_id)`` runs once tokens
    flow."""
    stream = client.completions.create(
        model=model,
        prompt=[5, 6, 7],
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
        **sampling,
    )
    text, usage, chunks = [], None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices:
            text.append(chunk.choices[0].text)
            chunks += 1
            if chunks == 2 and kill is not None:
                kill(chunk.id)  # the gateway's request id, as the workers list it
    assert usage is not None
    return "".join(text), usage.completion_tokens


def _survives_a_kill(stack, watch, client, sampling: dict) -> None:  # type: ignore[no-untyped-def]
    model = client.models.list().data[0].id
    expected, n = _stream(client, model, **sampling)
    assert n == MAX_TOKENS
    before = _migrations(stack)
    killed: list[str] = []

    def kill(request_id: str) -> None:
        victim = watch.holder("decode-", request_id)
        stack.proc(victim).kill()  # SIGKILL
        killed.append(victim)

    got, m = _stream(client, model, kill=kill, **sampling)
    assert killed
    assert (got, m) == (expected, n)
    assert _migrations(stack) == before + 1  # it did move: the killed worker held it


@pytest.mark.parametrize(
    "sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 1234}], ids=["greedy", "seeded"]
)
def test_a_stream_survives_its_decode_worker_being_killed(stack, watch, client, sampling):
    _survives_a_kill(stack, watch, client, sampling)


def test_a_stream_survives_its_colocated_worker_being_killed(tmp_path_factory):
    stack = launch(
        tmp_path_factory, "migration-colocated", ["--prefill-workers", "0", "--decode-workers", "2"]
    )
    watch = HeartbeatWatch(stack.urls["nats"])
    try:
        client = openai.OpenAI(
            base_url=stack.urls["gateway"] + "/v1", api_key="x", max_retries=0, timeout=120
        )
        _survives_a_kill(stack, watch, client, {"temperature": 1.0, "seed": 99})
    finally:
        watch.close()
        stack.stop()
