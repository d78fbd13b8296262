"""An overloaded stack sheds load cleanly: with its one batch slot taken, a request that waits in
the scheduler's queue past ``--max-queue-wait`` gets a 503 "overloaded" OpenAI error through the
official client (not a 504 after the gateway's two minutes), and the stack serves again once the
slot is free."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from tests.stack.conftest import launch

MAX_QUEUE_WAIT_S = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    flags = ["--prefill-workers", "0", "--decode-workers", "1", "--max-num-seqs", "1",
             "--max-queue-wait", str(MAX_QUEUE_WAIT_S)]  # fmt: skip
    stack = launch(tmp_path_factory, "overload", flags)
    yield stack
    stack.stop()


def test_a_request_queued_past_max_queue_wait_gets_503_overloaded(stack) -> None:
    client = openai.OpenAI(base_url=stack.urls["gateway"] + "/v1", api_key="x", max_retries=0)
    model = client.models.list().data[0].id
    hog = client.completions.create(
        model=model, prompt=[5, 6, 7], max_tokens=1500, stream=True, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = iter(hog)
    next(chunks)  # streaming: the one slot is taken
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        client.completions.create(model=model, prompt="Hello", max_tokens=4)
    waited = time.monotonic() - start
    assert refused.value.status_code == 503, refused.value
    assert "overloaded" in refused.value.message
    body = refused.value.body
    assert isinstance(body, dict) and body.get("code") == "service_unavailable", body
    assert MAX_QUEUE_WAIT_S <= waited < 30, waited
    hog.close()  # the client leaves: the gateway cancels it and the slot frees
    deadline = time.monotonic() + 60
    while True:
        try:
            done = client.completions.create(model=model, prompt="Hello", max_tokens=4)
            break
        except openai.APIStatusError as e:  # the cancel may still be on its way
            assert e.status_code == 503 and time.monotonic() < deadline, e
    assert done.usage.completion_tokens == 4
    metrics = httpx.get(stack.status["scheduler"] + "/metrics", timeout=10).text
    shed = re.findall(r"^loraplex_scheduler_queue_timeouts_total\{tenant=\"[^\"]+\"\} (\S+)$",
                      metrics, re.M)  # fmt: skip
    assert shed and sum(float(v) for v in shed) >= 1, metrics
