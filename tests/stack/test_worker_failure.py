"""A decode worker killed mid-request: the client gets an error within a bound, never a hang."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.stack.conftest import launch

HEARTBEAT_TIMEOUT_S = 3.0
UNAVAILABLE_TIMEOUT_S = 5.0  # a request waiting to migrate waits this long for a live worker
BOUND_S = HEARTBEAT_TIMEOUT_S + UNAVAILABLE_TIMEOUT_S + 7.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # Without restarts: this checks what happens while no decode worker is left.
    stack = launch(
        tmp_path_factory,
        "failure",
        ["--prefill-workers", "1", "--decode-workers", "2", "--no-restart"],
    )
    yield stack
    stack.stop()


def test_killed_decode_worker_fails_stream_within_bound(stack):
    base = stack.urls["gateway"]
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    stream = client.completions.create(
        model=model,
        prompt=[5, 6, 7],
        max_tokens=1900,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    it = iter(stream)
    next(it)  # tokens are flowing
    for name in ("decode-0", "decode-1"):
        stack.proc(name).kill()
    killed = time.monotonic()
    with pytest.raises(openai.APIError) as err:
        for _ in it:
            pass
    assert time.monotonic() - killed < BOUND_S
    # No decode worker is left to migrate it to: the 503 names the cause, the one the scheduler
    # saw last: its worker stopped responding, or (when the scheduler re-placed it before it
    # noticed the second kill) the hand-over to the other, dead, decode worker failed.
    message = str(err.value).lower()
    assert "fail" in message, message
    assert "stopped responding" in message or "hand-over to decode worker" in message, message

    # With every decode worker gone, new requests are refused at once instead of queueing forever.
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        r = httpx.post(
            base + "/v1/completions",
            json={"model": model, "prompt": "hi", "max_tokens": 2},
            timeout=30,
        )
        if r.status_code == 503:
            break
        time.sleep(0.5)
    assert r.status_code == 503
    assert "worker" in r.json()["error"]["message"]
