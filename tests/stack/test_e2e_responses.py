"""The Responses API on the disaggregated stack (real workers, Redis, NATS): a kept answer
continues a conversation exactly as the offline engine would answer it; a background answer is
the same text as the one waited for; a background answer cancelled at once stays cancelled
(that the compute stops is checked against the fake scheduler: the demo model finishes too fast
here to tell)."""

from __future__ import annotations

import time

import pytest

from loraplex import LLM, SamplingParams
from tests.stack.e2e_common import offline_llm


@pytest.fixture(scope="module")
def llm(disagg_stack) -> LLM:  # type: ignore[no-untyped-def]
    return offline_llm(disagg_stack)


def until_status(client, rid: str, *wanted: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.responses.retrieve(rid)
        if r.status in wanted:
            return r
        time.sleep(0.1)
    raise AssertionError(f"{rid} never reached {wanted}: {r.status}")


def test_a_kept_answer_continues_as_the_offline_engine_answers(client, llm, loras) -> None:  # type: ignore[no-untyped-def]
    lora = loras[0]
    params = SamplingParams(temperature=0, max_tokens=8)
    first = client.responses.create(model=lora, input="Hello", max_output_tokens=8, temperature=0)
    want1 = llm.chat([{"role": "user", "content": "Hello"}], params, lora=lora)[0].text
    assert first.output_text == want1 and first.store is True
    second = client.responses.create(
        model=lora, input="And?", previous_response_id=first.id, max_output_tokens=8,
        temperature=0,
    )  # fmt: skip
    conversation = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": want1},
        {"role": "user", "content": "And?"},
    ]
    assert second.output_text == llm.chat(conversation, params, lora=lora)[0].text


def test_background_gives_the_same_answer_and_cancels(client, model_id) -> None:  # type: ignore[no-untyped-def]
    kw = {"model": model_id, "input": "Tell me", "max_output_tokens": 12, "temperature": 0}
    waited = client.responses.create(**kw)
    bg = client.responses.create(background=True, **kw)
    assert bg.status in ("queued", "in_progress")
    done = until_status(client, bg.id, "completed", "incomplete")
    assert done.output_text == waited.output_text

    # cancelled at once: the generation (up to 2000 tokens) cannot have ended yet
    long = client.responses.create(
        model=model_id, input="Go on", max_output_tokens=2000, background=True
    )
    assert client.responses.cancel(long.id).status == "cancelled"
    time.sleep(1.0)  # the generating task has heard of it, and left the answer as it is
    assert client.responses.retrieve(long.id).status == "cancelled"
