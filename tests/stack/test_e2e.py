"""End to end through the disaggregated stack with the official openai client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from loraplex import LLM, SamplingParams
from tests.stack.e2e_common import PROMPTS


def test_models_lists_base_and_adapters(client, disagg_stack, model_id):
    models = {m.id: m for m in client.models.list().data}
    assert model_id in models
    for a in disagg_stack.adapters:
        assert a.name in models
        assert models[a.name].parent == model_id


def test_greedy_matches_offline_llm(client, disagg_stack, model_id, loras):
    llm = LLM(
        Path(disagg_stack.urls["model_dir"]),
        dtype="float32",
        device="cpu",
        max_loras=8,
        max_lora_rank=64,
    )
    for a in disagg_stack.adapters:
        llm.add_lora(a.name, a.path)
    expected = llm.generate(
        PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), lora=loras
    )
    for prompt, lora, exp in zip(PROMPTS, loras, expected, strict=False):
        resp = client.completions.create(
            model=lora or model_id,
            prompt=prompt,
            max_tokens=12,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert resp.choices[0].text == exp.text
        assert resp.usage.prompt_tokens == len(prompt)
        assert resp.usage.completion_tokens == 12
    # Penalties travel through the gateway and the scheduler to the workers: a prompt whose
    # answer they change must come back exactly as the offline engine penalizes it.
    penalized = SamplingParams(
        temperature=0,
        max_tokens=12,
        ignore_eos=True,
        presence_penalty=2.0,
        frequency_penalty=1.0,
        repetition_penalty=3.0,
    )
    plain = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    candidates = [[7] * 6, [5, 6, 7, 5, 6, 7], [100, 101] * 4, *PROMPTS]
    prompt = next(
        p
        for p in candidates
        if llm.generate(p, penalized)[0].token_ids != llm.generate(p, plain)[0].token_ids
    )
    resp = client.completions.create(
        model=model_id,
        prompt=prompt,
        max_tokens=12,
        temperature=0,
        presence_penalty=2.0,
        frequency_penalty=1.0,
        extra_body={"ignore_eos": True, "repetition_penalty": 3.0},
    )
    assert resp.choices[0].text == llm.generate(prompt, penalized)[0].text


def test_streaming_equals_non_streaming(client, model_id, loras):
    for prompt, lora in zip(PROMPTS[:3], loras[:3], strict=False):
        kwargs = {
            "model": lora or model_id,
            "prompt": prompt,
            "max_tokens": 10,
            "temperature": 0,
            "extra_body": {"ignore_eos": True},
        }
        whole = client.completions.create(**kwargs)
        chunks = list(
            client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
        )
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == whole.choices[0].text
        usage = [c.usage for c in chunks if c.usage is not None]
        assert (
            usage and usage[-1].completion_tokens == 10 and usage[-1].prompt_tokens == len(prompt)
        )


def test_chat_completion(client, loras):
    resp = client.chat.completions.create(
        model=loras[0],
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=8,
        temperature=0,
    )
    assert resp.choices[0].message.role == "assistant"
    assert resp.usage.completion_tokens <= 8


def test_concurrent_requests(disagg_stack, model_id, loras):
    async def run() -> list:
        aclient = openai.AsyncOpenAI(
            base_url=disagg_stack.urls["gateway"] + "/v1", api_key="x", max_retries=0
        )
        calls = [
            aclient.completions.create(
                model=loras[i % len(loras)] or model_id,
                prompt=PROMPTS[i % len(PROMPTS)],
                max_tokens=8,
                temperature=0.7,
                seed=i,
                extra_body={"ignore_eos": True},
            )
            for i in range(40)
        ]
        return await asyncio.gather(*calls)

    results = asyncio.run(run())
    assert len(results) == 40
    assert all(r.usage.completion_tokens == 8 for r in results)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "no-such-model", "prompt": "hi"}, 404),
        ({"prompt": "hi", "max_tokens": 0}, 400),
        ({"prompt": "hi", "temperature": -1}, 400),
        ({"prompt": [1] * 5000, "max_tokens": 4}, 400),
    ],
)
def test_errors_are_openai_shaped(disagg_stack, model_id, body, status):
    body = {"model": model_id, **body}
    r = httpx.post(disagg_stack.urls["gateway"] + "/v1/completions", json=body, timeout=30)
    assert r.status_code == status
    assert "message" in r.json()["error"]
    # ... and the server keeps serving.
    ok = httpx.post(
        disagg_stack.urls["gateway"] + "/v1/completions",
        json={"model": model_id, "prompt": "hi", "max_tokens": 2},
        timeout=30,
    )
    assert ok.status_code == 200


def test_repeated_prompt_hits_the_prefix_cache(client, disagg_stack, model_id):
    """The second identical 40-token prompt reuses the first one's two full 16-token blocks on
    the prefill worker; the hit shows on that worker's own /metrics; both answers are the same."""
    import re
    import time

    pattern = re.compile(r"loraplex_worker_prefix_cache_hit_tokens_total\{[^}]*\} (\S+)")

    def hits() -> float:  # the stack is shared: count this test's hits, not earlier ones
        text = httpx.get(disagg_stack.status["prefill-0"] + "/metrics", timeout=10).text
        return sum(float(v) for v in pattern.findall(text))

    before = hits()
    prompt = [(i * 31 + 7) % 500 for i in range(40)]
    answers = [
        client.completions.create(model=model_id, prompt=prompt, max_tokens=4, temperature=0)
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert answers[0] == answers[1]
    deadline = time.monotonic() + 10
    while hits() - before < 32 and time.monotonic() < deadline:  # read at scrape time
        time.sleep(0.5)
    text = httpx.get(disagg_stack.status["prefill-0"] + "/metrics", timeout=10).text
    assert hits() - before >= 32, text[-3000:]
    assert "loraplex_worker_prefix_cache_query_tokens_total" in text


def test_metrics_show_latency_queue_kv_and_slots(client, disagg_stack, model_id):
    client.completions.create(model=model_id, prompt=[1, 2, 3], max_tokens=4)
    text = httpx.get(disagg_stack.urls["metrics"], timeout=10).text  # the gateway's
    text += httpx.get(disagg_stack.status["decode-0"] + "/metrics", timeout=10).text
    text += httpx.get(disagg_stack.status["scheduler"] + "/metrics", timeout=10).text
    for name in (
        "loraplex_gateway_time_to_first_token_seconds_count",
        "loraplex_gateway_inter_token_latency_seconds_count",
        'loraplex_gateway_tokens_total{kind="completion",tenant="default"}',
        'loraplex_worker_kv_blocks_capacity{role="decode",worker="decode-0"} 512.0',
        'loraplex_worker_adapter_slots_capacity{role="decode",worker="decode-0"} 8.0',
        'loraplex_scheduler_tenant_service{tenant="default"}',
        'loraplex_scheduler_queue_time_seconds_count{tenant="default"}',
    ):
        assert name in text, name
