"""Workers killed under `loraplex up`'s supervisor: streams on them are migrated to the restarted
worker (the same text as an uninterrupted run) or end with an SSE error event (never a truncated
body), requests waiting for them end within the heartbeat bound, and the workers come back and
serve again."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.stack.conftest import launch

HEARTBEAT_TIMEOUT_S = 3.0
UNAVAILABLE_TIMEOUT_S = 5.0
BOUND_S = HEARTBEAT_TIMEOUT_S + UNAVAILABLE_TIMEOUT_S + 5.0  # detection + waiting + slack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = launch(tmp_path_factory, "healing", ["--prefill-workers", "1", "--decode-workers", "1"])
    yield stack
    stack.stop()


def _model(base: str) -> str:
    return httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["id"]


def _serves(base: str, model: str, timeout: float = 90.0) -> None:
    """Wait until a normal request completes (the restarted worker joined)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(
            base + "/v1/completions",
            json={"model": model, "prompt": "hello", "max_tokens": 4, "temperature": 0},
            timeout=30,
        )
        if r.status_code == 200:
            assert r.json()["usage"]["completion_tokens"] == 4
            return
        assert r.status_code == 503, r.text  # a clean refusal while the worker restarts
        assert time.monotonic() < deadline, "the stack did not serve again after the restart"
        time.sleep(0.5)


STREAM = {"prompt": [5, 6, 7], "max_tokens": 1500, "temperature": 0, "ignore_eos": True}


def _uninterrupted(base: str, model: str) -> str:
    r = httpx.post(base + "/v1/completions", json={"model": model, **STREAM}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _stream_events(base: str, model: str, on_first) -> list[str]:  # type: ignore[no-untyped-def]
    """The SSE data lines of one long stream; ``on_first`` runs once tokens flow."""
    body = {"model": model, **STREAM, "stream": True}
    events: list[str] = []
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 2:
                    on_first()
    return events


def test_killed_decode_worker_ends_its_stream_with_an_error_event_and_comes_back(stack):
    base = stack.urls["gateway"]
    model = _model(base)
    svc = stack.service("decode-0")
    killed: list[float] = []

    def kill() -> None:
        svc.proc.kill()
        killed.append(time.monotonic())

    events = _stream_events(base, model, kill)
    assert events[-1] == "[DONE]"  # the body ends properly: no truncated chunked stream
    last = json.loads(events[-2])
    if "error" in last:  # the restarted worker did not join within the bound
        assert time.monotonic() - killed[0] < BOUND_S
        error = last["error"]
        assert error["code"] == 503 or "fail" in error["message"] or "respond" in error["message"]
    else:  # migrated to the restarted worker (prompt + tokens so far prefilled again)
        assert last["choices"][0]["finish_reason"] == "length"
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        assert text == _uninterrupted(base, model)
    _serves(base, model)
    assert svc.restarts >= 1 and len(svc.history) >= 2
    _every_service_probed_ready(stack)


def _every_service_probed_ready(stack) -> None:  # type: ignore[no-untyped-def]
    """The supervisor saw each service come up (its ready URL answered), the restarted worker
    too: a later kill of a service that came up is restarted without a crash-loop backoff."""
    deadline = time.monotonic() + 10
    while any(s.ready_at is None for s in stack.services) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(s.ready_url for s in stack.services)
    assert [s.name for s in stack.services if s.ready_at is None] == []


def test_requests_waiting_for_a_killed_prefill_worker_end_within_the_bound(stack):
    """Eight requests in flight and queued when the only prefill worker dies: each one completes
    or fails with a JSON error within the bound (none waits for the 120 s request timeout)."""
    base = stack.urls["gateway"]
    model = _model(base)
    _serves(base, model)
    svc = stack.service("prefill-0")
    prompt = list(range(5, 400))  # long enough that the prefills are still queued at the kill

    def one(i: int) -> tuple[int, float]:
        body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}
        r = httpx.post(base + "/v1/completions", json=body, timeout=120)
        if r.status_code != 200:
            assert "error" in r.json() and r.status_code in (503, 504), r.text
        return r.status_code, time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(8)]
        time.sleep(0.3)
        svc.proc.kill()
        killed = time.monotonic()
        results = [f.result() for f in futures]
    assert all(code in (200, 503) for code, _ in results), results
    assert all(done - killed < BOUND_S for _, done in results)
    _serves(base, model)
    assert svc.restarts >= 1
