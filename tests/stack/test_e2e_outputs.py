"""End to end on the disaggregated stack: what a completion carries beyond its text (logprobs,
echo, several choices) and constrained (structured) outputs, against the offline engine."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from loraplex import SamplingParams
from loraplex.structured_outputs import StructuredOutputsParams
from tests.stack.e2e_common import PROMPTS, offline_llm

SCHEMA = {
    "type": "object",
    "properties": {"pick": {"enum": ["red", "green"]}, "count": {"type": "integer", "maximum": 9}},
    "required": ["pick", "count"],
    "additionalProperties": False,
}


def test_logprobs_through_the_stack(client, disagg_stack, model_id, loras):
    """Completions (streamed and not) and chat report the offline engine's logprobs; the
    first token's travel with the K/V from the prefill worker."""
    llm = offline_llm(disagg_stack)
    prompt, lora = PROMPTS[0], loras[0]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    want = llm.generate(prompt, params, lora=lora)[0].logprobs
    resp = client.completions.create(
        model=lora, prompt=prompt, max_tokens=6, temperature=0, logprobs=2,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    lp = resp.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([w.logprob for w in want], abs=1e-4)
    assert "".join(lp.tokens) == resp.choices[0].text
    assert all(len(top) == 2 for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    streamed = []
    for chunk in client.completions.create(
        model=lora, prompt=prompt, max_tokens=6, temperature=0, logprobs=2, stream=True,
        extra_body={"ignore_eos": True},
    ):  # fmt: skip
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.token_logprobs
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-6)
    chat = client.chat.completions.create(
        model=lora,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(c.top_logprobs) == 3 and c.logprob <= 0 for c in content)
    assert content[0].top_logprobs[0].token == content[0].token  # greedy picks the top token
    plain = client.completions.create(model=lora, prompt=prompt, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_n_choices_match_offline_seeds(client, disagg_stack, model_id):
    """n=3 with seed 11 gives the offline engine's samples for seeds 11, 12 and 13."""
    llm = offline_llm(disagg_stack)
    prompt = PROMPTS[1]
    want = [
        llm.generate(prompt, SamplingParams(temperature=0.9, seed=11 + i, max_tokens=8))[0].text
        for i in range(3)
    ]
    resp = client.completions.create(
        model=model_id, prompt=prompt, max_tokens=8, temperature=0.9, seed=11, n=3
    )
    assert [c.text for c in sorted(resp.choices, key=lambda c: c.index)] == want
    assert len(set(want)) > 1  # the seeds really differ


def test_echo_scores_the_prompt(client, disagg_stack, model_id, loras):
    """``echo`` + ``logprobs``: the prompt's tokens come first, scored by the prefill worker as
    the offline engine scores them (the first has none); ``max_tokens`` 0 gives only those."""
    llm = offline_llm(disagg_stack)
    prompt, lora = PROMPTS[4], loras[0]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, prompt_logprobs=2)
    offline = llm.generate(prompt, params, lora=lora)[0]
    want = [None] + [p.logprob for p in offline.prompt_logprobs[1:]]
    prompt_text = llm.tokenizer.decode(prompt)

    only = client.completions.create(
        model=lora, prompt=prompt, max_tokens=0, echo=True, logprobs=2, temperature=0
    )
    choice = only.choices[0]
    assert choice.text == prompt_text and choice.finish_reason == "length"
    assert (only.usage.prompt_tokens, only.usage.completion_tokens) == (len(prompt), 0)
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(want[1:], abs=1e-4)
    assert "".join(lp.tokens) == prompt_text and len(lp.tokens) == len(prompt)
    for token, top in zip(lp.tokens[1:], lp.top_logprobs[1:], strict=True):
        assert token in top and 2 <= len(top) <= 3  # the token itself joins its alternatives

    full = client.completions.create(
        model=lora, prompt=prompt, max_tokens=4, echo=True, logprobs=1, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = full.choices[0]
    assert choice.text == prompt_text + offline.text
    assert len(choice.logprobs.tokens) == len(prompt) + 4 == len(choice.logprobs.text_offset)
    assert choice.logprobs.token_logprobs[1 : len(prompt)] == pytest.approx(want[1:], abs=1e-4)
    assert full.usage.completion_tokens == 4

    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=lora,
            prompt=prompt,
            max_tokens=4,
            echo=True,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        if c.choices
    )
    assert streamed == prompt_text + offline.text
    text = "Once upon"
    plain = client.completions.create(model=model_id, prompt=text, max_tokens=3, echo=True)
    assert plain.choices[0].text.startswith(text) and plain.choices[0].logprobs is None


def test_structured_outputs_through_the_stack(client, disagg_stack, model_id, loras):
    """A JSON schema (chat ``response_format``) and a choice (vLLM ``guided_choice``) hold on the
    disaggregated path (the prefill worker samples the first token, a decode worker the rest),
    token for token as the offline engine generates them."""
    llm = offline_llm(disagg_stack)
    messages = [{"role": "user", "content": "pick one"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "pick", "schema": SCHEMA}}
    chat = client.chat.completions.create(
        model=loras[0], messages=messages, max_tokens=40, temperature=0, response_format=fmt
    )
    value = json.loads(chat.choices[0].message.content)
    assert value["pick"] in ("red", "green") and 0 <= value["count"] <= 9
    assert chat.choices[0].finish_reason == "stop"

    choices = ["alpha", "beta gamma", 'quote "q"']
    prompt = PROMPTS[2]
    for seed in range(3):
        resp = client.completions.create(
            model=model_id, prompt=prompt, max_tokens=16, temperature=1.0, seed=seed,
            extra_body={"guided_choice": choices},
        )  # fmt: skip
        params = SamplingParams(
            temperature=1.0, seed=seed, max_tokens=16,
            structured_outputs=StructuredOutputsParams(choice=tuple(choices)),
        )  # fmt: skip
        assert resp.choices[0].text == llm.generate(prompt, params)[0].text
        assert resp.choices[0].text in choices


def test_an_exploding_grammar_is_a_400_and_the_worker_serves_on(client, disagg_stack, model_id):
    """A grammar whose rules nest repeats (no scan sees it; it compiles at once) takes seconds
    per token to match after a few tokens (red team): the decode worker gives it its per-token
    budget, ends it with a 400, and serves the next request as before."""
    nested = 'root ::= x{0,50}\nx ::= y{0,50}\ny ::= "a"{0,50}'
    with pytest.raises(openai.BadRequestError, match="too expensive to enforce"):
        client.completions.create(
            model=model_id, prompt=PROMPTS[0], max_tokens=60, temperature=0,
            extra_body={"guided_grammar": nested, "min_tokens": 60},
        )  # fmt: skip
    resp = client.completions.create(model=model_id, prompt=PROMPTS[1], max_tokens=8)
    assert resp.choices[0].finish_reason == "length"


def test_stop_string_through_the_stack(client, disagg_stack, model_id):
    """A stop string spanning tokens (the first of them the prefill worker's): streamed and not,
    the text is the offline engine's, cut before it, with finish_reason "stop" and the offline
    token count (up to the token that completed it)."""
    llm = offline_llm(disagg_stack)
    prompt = PROMPTS[0]
    plain = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    full = llm.generate(prompt, plain)[0]
    head = llm.tokenizer.decode(full.token_ids[:3], True)
    stop = full.text[len(head) - 1 : len(head) + 2]
    assert len(stop) == 3 and stop.strip()
    want = llm.generate(
        prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=(stop,))
    )[0]
    assert want.finish_reason == "stop" and len(want.token_ids) < 12
    assert want.text == full.text[: full.text.index(stop)]
    kwargs = {
        "model": model_id, "prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [stop],
        "extra_body": {"ignore_eos": True},
    }  # fmt: skip
    whole = client.completions.create(**kwargs)
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == (want.text, "stop")
    assert whole.usage.completion_tokens == len(want.token_ids)
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == len(want.token_ids)


PAINT = {
    "type": "function",
    "function": {"name": "paint", "description": "Paint the wall", "parameters": SCHEMA},
}


def test_tool_calls_through_the_stack(client, disagg_stack, model_id, loras):
    """``tool_choice`` "required" and a named function on the real engine: the random model's
    output, held to the calls' schema by the grammar, always parses into valid calls; streamed,
    the named call's arguments are the same as whole (greedy)."""
    messages = [{"role": "user", "content": "paint the wall"}]
    required = client.chat.completions.create(
        model=loras[0], messages=messages, tools=[PAINT], tool_choice="required",
        parallel_tool_calls=False, max_tokens=60, temperature=0,
    )  # fmt: skip
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "paint" and call.id.startswith("call_")
    assert args["pick"] in ("red", "green") and 0 <= args["count"] <= 9

    named = {"type": "function", "function": {"name": "paint"}}
    kwargs = {
        "model": model_id, "messages": messages, "tools": [PAINT], "tool_choice": named,
        "max_tokens": 40, "temperature": 0,
    }  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "stop"
    arguments = whole.message.tool_calls[0].function.arguments
    assert set(json.loads(arguments)) == {"pick", "count"}
    pieces = [
        d.function.arguments
        for chunk in client.chat.completions.create(stream=True, **kwargs)
        for c in chunk.choices
        for d in c.delta.tool_calls or []
    ]
    assert len(pieces) > 1 and "".join(pieces) == arguments  # streamed piece by piece


def test_min_tokens_through_the_stack(client, disagg_stack, model_id, loras):
    """``min_tokens`` holds EOS off on both workers of the disaggregated path (the prefill worker
    samples the first token): EOS biased to win every step still comes only after 4 tokens, the
    offline engine's; more than max_tokens is a 400 naming it."""
    llm = offline_llm(disagg_stack)
    end = min(llm.engine.eos_ids)
    prompt = PROMPTS[3]
    params = SamplingParams(temperature=0, max_tokens=8, logit_bias={end: 100}, min_tokens=4)
    want = llm.generate(prompt, params, lora=loras[0])[0]
    assert len(want.token_ids) == 5 and want.token_ids[-1] == end
    resp = client.completions.create(
        model=loras[0], prompt=prompt, max_tokens=8, temperature=0, logit_bias={str(end): 100},
        extra_body={"min_tokens": 4},
    )  # fmt: skip
    assert resp.choices[0].text == want.text and resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == 5
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(
            model=model_id, prompt=prompt, max_tokens=3, extra_body={"min_tokens": 4}
        )
    assert e.value.body["param"] == "min_tokens"


def test_lorax_generate_through_the_stack(disagg_stack, loras):
    """LoRAX's ``/generate`` (greedy unless asked to sample) with an adapter: the offline
    engine's tokens, each with its logprob; ``/generate_stream`` gives the same text."""
    llm = offline_llm(disagg_stack)
    prompt_text = "The quick brown fox"
    prompt = llm.tokenizer.encode(prompt_text)
    want = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6), lora=loras[0])[0]
    base = disagg_stack.urls["gateway"]
    params = {"adapter_id": loras[0], "max_new_tokens": 6, "details": True}
    out = httpx.post(
        f"{base}/generate", json={"inputs": prompt_text, "parameters": params}, timeout=30
    ).json()
    assert [t["id"] for t in out["details"]["tokens"]] == want.token_ids
    assert out["generated_text"] == want.text
    assert all(t["logprob"] <= 0 for t in out["details"]["tokens"])
    streamed = httpx.post(
        f"{base}/generate_stream", json={"inputs": prompt_text, "parameters": params}, timeout=30
    )
    lines = [json.loads(x[len("data:") :]) for x in streamed.text.split("\n\n") if x.strip()]
    assert lines[-1]["generated_text"] == out["generated_text"]


def test_responses_api_through_the_stack(client, disagg_stack, model_id, loras):
    """OpenAI's Responses API on the real engine: the chat route's greedy text, and a required
    function call that parses (the grammar holds the random model to the schema)."""
    chat = client.chat.completions.create(
        model=loras[0], messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0
    )
    r = client.responses.create(model=loras[0], input="hello", max_output_tokens=6, temperature=0)
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.output_tokens == chat.usage.completion_tokens
    tool = {"type": "function", "name": "paint", "parameters": SCHEMA}
    called = client.responses.create(
        model=model_id, input="paint", tools=[tool], tool_choice="required", max_output_tokens=60,
        temperature=0, parallel_tool_calls=False,
    )  # fmt: skip
    (call,) = [item for item in called.output if item.type == "function_call"]
    assert call.name == "paint" and json.loads(call.arguments)["pick"] in ("red", "green")


def test_offline_chat_matches_the_chat_route(client, disagg_stack, loras):
    """vLLM's ``LLM.chat`` offline gives the server's chat answer token for token (greedy), with
    tools rendered into both prompts; several conversations come back in order."""
    llm = offline_llm(disagg_stack)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    tools = [PAINT]
    params = SamplingParams(temperature=0, max_tokens=8)
    for lora, with_tools in ((loras[0], None), (None, tools)):
        offline = llm.chat(conversation, params, lora=lora, tools=with_tools)[0]
        served = client.chat.completions.create(
            model=lora or client.models.list().data[0].id, messages=conversation, max_tokens=8,
            temperature=0, **({"tools": with_tools} if with_tools else {}),
        )  # fmt: skip
        assert served.usage.prompt_tokens == len(offline.prompt_token_ids)
        assert served.choices[0].message.content == offline.text
        assert served.usage.completion_tokens == len(offline.token_ids)
    both = llm.chat([conversation, conversation[1:]], params)
    assert [o.prompt_token_ids for o in both] == [
        llm.tokenizer.encode_chat(conversation),
        llm.tokenizer.encode_chat(conversation[1:]),
    ]


def test_sglang_generate_through_the_stack(disagg_stack, loras):
    """SGLang's ``/generate`` with ``lora_path`` on the real engine: the offline engine's greedy
    text; a batch of two comes back as a list in order."""
    llm = offline_llm(disagg_stack)
    text = "The quick brown fox"
    want = llm.generate(text, SamplingParams(temperature=0, max_tokens=6), lora=loras[0])[0]
    base = disagg_stack.urls["gateway"]
    params = {"temperature": 0, "max_new_tokens": 6}
    one = httpx.post(
        f"{base}/generate",
        json={"text": text, "sampling_params": params, "lora_path": loras[0]},
        timeout=30,
    ).json()
    assert one["text"] == want.text and one["meta_info"]["completion_tokens"] == len(want.token_ids)
    both = httpx.post(
        f"{base}/generate",
        json={"text": [text, text], "sampling_params": params, "lora_path": [loras[0]] * 2},
        timeout=30,
    ).json()
    assert [b["text"] for b in both] == [want.text, want.text]


def test_native_apis_logprobs_through_the_stack(disagg_stack, loras):
    """SGLang's ``return_logprob`` (with ``top_logprobs_num``) and LoRAX's
    ``return_k_alternatives``: the offline engine's logprobs, token ids and alternatives."""
    llm = offline_llm(disagg_stack)
    text = "The quick brown fox"
    want = llm.generate(
        text, SamplingParams(temperature=0, max_tokens=5, logprobs=2), lora=loras[0]
    )[0]
    base = disagg_stack.urls["gateway"]
    body = {"text": text, "lora_path": loras[0], "return_logprob": True, "top_logprobs_num": 2,
            "return_text_in_logprobs": True, "sampling_params": {"temperature": 0, "max_new_tokens": 5}}  # fmt: skip
    meta = httpx.post(f"{base}/generate", json=body, timeout=30).json()["meta_info"]
    out = meta["output_token_logprobs"]
    assert [t for _, t, _ in out] == want.token_ids
    assert [lp for lp, _, _ in out] == pytest.approx([w.logprob for w in want.logprobs], abs=1e-4)
    assert [[t for _, t, _ in top] for top in meta["output_top_logprobs"]] == [
        [t for t, _ in w.top] for w in want.logprobs
    ]
    assert all(isinstance(piece, str) for _, _, piece in out)
    params = {
        "adapter_id": loras[0],
        "max_new_tokens": 5,
        "details": True,
        "return_k_alternatives": 2,
    }
    toks = httpx.post(
        f"{base}/generate", json={"inputs": text, "parameters": params}, timeout=30
    ).json()["details"]["tokens"]
    assert [[a["id"] for a in t["alternative_tokens"]] for t in toks] == [
        [t for t, _ in w.top] for w in want.logprobs
    ]
