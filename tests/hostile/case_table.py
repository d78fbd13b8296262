"""The hostile-input table: every case of issue 13 that must be a 4xx (or tokens), never a 5xx,
and the neighbours of each (the same field through other routes, other bad values)."""

from __future__ import annotations

from tests.hostile.adapter_files import DELETE, PICKLE, fill, pickle_bytes, poke, rank_zero
from tests.hostile.cases import (
    TOKENS_OR_400,
    Case,
    by_path,
    chat,
    completion,
    completion_text,
    config,
    raw,
    raw_bytes,
    tensors,
    upload,
)

C, CHAT, TOK, DETOK, ADAPTERS = (
    "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/v1/adapters",
)  # fmt: skip
LOAD = "/v1/load_lora_adapter"

SAMPLING_CASES = [
    # the two requests that killed the prefill worker
    Case("repetition_penalty=1e-300", C, completion(repetition_penalty=1e-300), TOKENS_OR_400),
    Case("temperature=1e-300", C, completion(temperature=1e-300), TOKENS_OR_400),
    Case("chat temperature=1e-300", CHAT, chat(temperature=1e-300), TOKENS_OR_400),
    Case(
        "stream temperature=1e-300", C, completion(temperature=1e-300, stream=True), TOKENS_OR_400
    ),
    Case("top_p=1e-300", C, completion(top_p=1e-300), TOKENS_OR_400),
    Case("min_p=1e-300", C, completion(min_p=1e-300), TOKENS_OR_400),
    Case("temperature=1e300", C, completion(temperature=1e300), TOKENS_OR_400),
    Case("repetition_penalty=1e300", C, completion(repetition_penalty=1e300), TOKENS_OR_400),
    Case("seed=2**64-1", C, completion(seed=2**64 - 1), TOKENS_OR_400),
    # vLLM's ranges: clear 400s naming the field
    Case("repetition_penalty=0", C, completion(repetition_penalty=0), says="repetition_penalty"),
    Case("repetition_penalty=-1", C, completion(repetition_penalty=-1), says="repetition_penalty"),
    Case("temperature=-1", C, completion(temperature=-1), says="temperature"),
    Case("top_p=0", C, completion(top_p=0), says="top_p"),
    Case("top_p=1.5", C, completion(top_p=1.5), says="top_p"),
    Case("top_k=-5", C, completion(top_k=-5), says="top_k"),
    Case("min_p=1.5", C, completion(min_p=1.5), says="min_p"),
    Case("presence_penalty=1e300", C, completion(presence_penalty=1e300), says="presence_penalty"),
    Case("frequency_penalty=-3", C, completion(frequency_penalty=-3), says="frequency_penalty"),
    Case("max_tokens=-1", C, completion(max_tokens=-1), says="max_tokens"),
    Case("max_tokens=2**63", C, completion(max_tokens=2**63), says="max_tokens"),
    Case("seed=2**80", C, completion(seed=2**80), says="seed"),
    Case(
        "logit_bias token out of vocab",
        C,
        completion(logit_bias={"99999999": 1}),
        says="logit_bias",
    ),
    Case(
        "logit_bias value not a number", C, completion(logit_bias={"5": "abc"}), says="logit_bias"
    ),
    Case("logit_bias=1e300", C, completion(logit_bias={"5": 1e300}), TOKENS_OR_400),
    Case("temperature NaN", C, completion_text('"temperature": NaN'), says="temperature"),
    Case("repetition_penalty Infinity", C, completion_text('"repetition_penalty": Infinity')),
    Case("top_p -Infinity", C, completion_text('"top_p": -Infinity')),
]

SURROGATE = "a\ud800b"
UNICODE_CASES = [
    Case("surrogate in prompt", C, completion(prompt=SURROGATE)),
    Case("surrogate in prompt list", C, completion(prompt=[SURROGATE])),
    Case("surrogate in chat content", CHAT, chat(SURROGATE)),
    Case("surrogate in chat content part", CHAT, chat([{"type": "text", "text": SURROGATE}])),
    Case("surrogate in stop", C, completion(stop=[SURROGATE])),
    Case("surrogate in chat stop", CHAT, chat(stop=SURROGATE)),
    Case("surrogate in user", C, completion(user=SURROGATE)),
    Case("surrogate in model", C, completion(model=SURROGATE), (400, 404)),
    Case(
        "surrogate in /tokenize prompt",
        TOK,
        lambda c: raw({"model": c.model_id, "prompt": SURROGATE}),
    ),
    Case(
        "surrogate in /tokenize messages",
        TOK,
        lambda c: raw({"model": c.model_id, "messages": [{"role": "user", "content": SURROGATE}]}),
    ),
    Case("surrogate in adapter name", ADAPTERS, upload(lambda t: t, name=SURROGATE)),
    Case(
        "surrogate in registration path",
        ADAPTERS,
        lambda c: raw({"name": c.fresh_name(), "path": SURROGATE}),
    ),
    Case(
        "NUL in registration path",
        ADAPTERS,
        lambda c: raw({"name": c.fresh_name(), "path": "a\x00b"}),
    ),
    Case(
        "NUL in load_lora_adapter path",
        LOAD,
        lambda c: raw({"lora_name": c.fresh_name(), "lora_path": "a\x00b"}),
    ),
    Case("NUL in prompt", C, completion(prompt="a\x00b"), TOKENS_OR_400),
    Case(
        "invalid UTF-8 completion body",
        C,
        lambda c: raw_bytes(
            b'{"model": "%s", "prompt": "a\xff\xfeb", "max_tokens": 2}' % c.model_id.encode()
        ),
    ),
    Case(
        "invalid UTF-8 chat body",
        CHAT,
        lambda c: raw_bytes(
            b'{"model": "%s", "messages": [{"role": "user", "content": "\xc3\x28"}]}'
            % c.model_id.encode()
        ),
    ),
    Case(
        "invalid UTF-8 /tokenize body",
        TOK,
        lambda c: raw_bytes(b'{"model": "%s", "prompt": "\xed\xa0\x80"}' % c.model_id.encode()),
    ),
    Case(
        "invalid UTF-8 /detokenize body",
        DETOK,
        lambda c: raw_bytes(b'{"model": "\xff", "tokens": [5]}'),
    ),
    Case(
        "invalid UTF-8 registration body",
        ADAPTERS,
        lambda c: raw_bytes(b'{"name": "x\xff", "path": "y"}'),
    ),
    Case(
        "invalid UTF-8 load_lora_adapter body",
        LOAD,
        lambda c: raw_bytes(b'{"lora_name": "x\xff", "lora_path": "y"}'),
    ),
]

ADAPTER_CASES = [
    Case(
        "rank-0 tensors and no r",
        ADAPTERS,
        upload(lambda t: t.with_tensors(rank_zero).with_config(r=DELETE)),
    ),
    Case("rank-0 tensors", ADAPTERS, tensors(rank_zero)),
    Case("r=0", ADAPTERS, config(r=0), says="r"),
    Case("r=-4", ADAPTERS, config(r=-4), says="r"),
    Case("r='4'", ADAPTERS, config(r="4"), says="r"),
    Case("r=true", ADAPTERS, config(r=True), says="r"),
    Case("r=4.5", ADAPTERS, config(r=4.5), says="r"),
    Case("r=1e9", ADAPTERS, config(r=10**9), says="r"),
    Case("rank_pattern value 0", ADAPTERS, config(rank_pattern={"q_proj": 0}), says="rank_pattern"),
    Case(
        "rank_pattern value a string",
        ADAPTERS,
        config(rank_pattern={"q_proj": "4"}),
        says="rank_pattern",
    ),
    Case(
        "rank_pattern value 'abc'",
        ADAPTERS,
        config(rank_pattern={"q_proj": "abc"}),
        says="rank_pattern",
    ),
    Case("rank_pattern key '('", ADAPTERS, config(rank_pattern={"(": 4}), says="rank_pattern"),
    Case("rank_pattern a string", ADAPTERS, config(rank_pattern="abc"), says="rank_pattern"),
    Case("lora_alpha 'abc'", ADAPTERS, config(lora_alpha="abc"), says="lora_alpha"),
    # red team: 500s, from math.isfinite on an int no float holds and json past 4,300 digits
    Case("lora_alpha 10**400", ADAPTERS, config(lora_alpha=10**400), says="lora_alpha"),
    Case(
        "alpha_pattern value 10**400",
        ADAPTERS,
        config(alpha_pattern={"q_proj": 10**400}),
        says="alpha_pattern",
    ),
    Case(  # 0 x 1e300 passed the bound in Python floats; float32 made every logit NaN
        "lora_alpha 1e300 and B all zeros",
        ADAPTERS,
        upload(
            lambda t: t.with_tensors(lambda n, w: w * 0 if "lora_B" in n else w).with_config(
                lora_alpha=1e300
            )
        ),
        says="beyond float32",
    ),
    Case(
        "r of 5,000 digits",
        ADAPTERS,
        upload(lambda t: t.with_raw_config(b'{"r": 1' + b"0" * 5000 + b"}")),
        says="not valid JSON",
    ),
    Case("lora_alpha null", ADAPTERS, config(lora_alpha=None), says="lora_alpha"),
    Case(
        "alpha_pattern value null",
        ADAPTERS,
        config(alpha_pattern={"q_proj": None}),
        says="alpha_pattern",
    ),
    Case(
        "alpha_pattern value 'abc'",
        ADAPTERS,
        config(alpha_pattern={"q_proj": "abc"}),
        says="alpha_pattern",
    ),
    Case("alpha_pattern key '['", ADAPTERS, config(alpha_pattern={"[": 8}), says="alpha_pattern"),
    Case("use_rslora 'yes'", ADAPTERS, config(use_rslora="yes"), says="use_rslora"),
    Case("modules_to_save", ADAPTERS, config(modules_to_save=["lm_head"]), says="modules_to_save"),
    Case(
        "target_modules names no module",
        ADAPTERS,
        config(target_modules=["q_proj", "v_proj", "no_such_proj"]),
        says="no_such_proj",
    ),
    Case("target_modules an int", ADAPTERS, config(target_modules=42), says="target_modules"),
    Case(
        "target_modules with a surrogate",
        ADAPTERS,
        config(target_modules=["q_proj", "v_proj\udfff"]),
    ),
    Case(
        "config not UTF-8", ADAPTERS, upload(lambda t: t.with_raw_config(b'{"r": 4, "x": "\xff"}'))
    ),
    Case("config not an object", ADAPTERS, upload(lambda t: t.with_raw_config(b"[1, 2]"))),
    Case("tensors all 1e30", ADAPTERS, tensors(fill(1e30)), says="lora_"),
    Case("a NaN in a tensor", ADAPTERS, tensors(poke(float("nan"))), says="lora_B"),
    Case("an inf in a tensor", ADAPTERS, tensors(poke(float("inf"))), says="lora_B"),
    Case(
        "pickle weights instead",
        ADAPTERS,
        upload(lambda t: t.without_weights().with_extras({PICKLE: pickle_bytes(t.tensors)})),
        says=PICKLE,
    ),
    Case(
        "pickle weights besides",
        ADAPTERS,
        upload(lambda t: t.with_extras({PICKLE: pickle_bytes(t.tensors)})),
        says=PICKLE,
    ),
    Case(
        "unknown weight file",
        ADAPTERS,
        upload(lambda t: t.with_extras({"model-extra.safetensors": t.weights_bytes()})),
        says="model-extra.safetensors",
    ),
    Case(
        "path: pickle folder",
        ADAPTERS,
        by_path(lambda t: t.without_weights().with_extras({PICKLE: pickle_bytes(t.tensors)})),
        says=PICKLE,
    ),
    Case(
        "path: tensors all 1e30",
        ADAPTERS,
        by_path(lambda t: t.with_tensors(fill(1e30))),
        says="lora_",
    ),
    Case(
        "path: lora_alpha null",
        ADAPTERS,
        by_path(lambda t: t.with_config(lora_alpha=None)),
        says="lora_alpha",
    ),
    Case(
        "load_lora_adapter: rank_pattern '('",
        LOAD,
        by_path(lambda t: t.with_config(rank_pattern={"(": 4}), vllm=True),
    ),
    Case(
        "load_lora_adapter: tensors all 1e30",
        LOAD,
        by_path(lambda t: t.with_tensors(fill(1e30)), vllm=True),
    ),
]
ALL_CASES = SAMPLING_CASES + UNICODE_CASES + ADAPTER_CASES
