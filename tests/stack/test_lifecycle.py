"""Colocated stack: NATS and Redis restarts are survived; SIGTERM drains in-flight work."""

from __future__ import annotations

import signal
import time

import openai
import pytest

from loraplex.tooling.servers import start_nats, start_redis
from tests.stack.conftest import launch


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle-servers")
    servers = {
        "nats": start_nats(root / "nats"),
        "redis": start_redis(root / "redis"),
        "root": root,
    }
    yield servers
    # The restart tests replace the processes in this dict: stop the ones there now.
    servers["nats"].stop()
    servers["redis"].stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, servers):
    extra = ["--prefill-workers", "0", "--decode-workers", "1"]
    extra += ["--nats-url", servers["nats"].url, "--redis-url", servers["redis"].url]
    stack = launch(tmp_path_factory, "lifecycle", extra)
    yield stack
    stack.stop()


def _client(stack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=stack.urls["gateway"] + "/v1", api_key="x", max_retries=0, timeout=60
    )


def _eventually_completes(stack, model: str, within_s: float = 30.0) -> str:
    deadline = time.monotonic() + within_s
    while True:
        try:
            return (
                _client(stack)
                .completions.create(model=model, prompt=[4, 5, 6], max_tokens=4)
                .choices[0]
                .text
            )
        except openai.APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_colocated_stack_serves_adapters(stack):
    out = _client(stack).completions.create(
        model=stack.adapters[1].name, prompt="hello", max_tokens=5
    )
    assert out.usage.completion_tokens == 5


def test_nats_restart_is_survived(stack, servers):
    nats = servers["nats"]
    nats.stop()
    time.sleep(1.0)
    servers["nats"] = start_nats(servers["root"] / "nats", port=nats.port)
    _eventually_completes(stack, stack.adapters[0].name)


def test_redis_restart_keeps_adapters(stack, servers):
    redis = servers["redis"]
    redis.stop()  # SIGTERM: AOF is flushed
    servers["redis"] = start_redis(servers["root"] / "redis", port=redis.port)
    # An adapter no worker has paged in yet must come from the restarted Redis.
    _eventually_completes(stack, stack.adapters[3].name)
    names = {m.id for m in _client(stack).models.list().data}
    assert {a.name for a in stack.adapters} <= names


def test_sigterm_drains_in_flight_requests(stack):
    client = _client(stack)
    model = client.models.list().data[0].id
    stream = client.completions.create(
        model=model,
        prompt=[9, 8, 7],
        max_tokens=300,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    it = iter(stream)
    first = next(it)
    worker = stack.proc("decode-0")
    worker.send_signal(signal.SIGTERM)
    chunks = [first, *it]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert worker.wait(timeout=30) == 0
