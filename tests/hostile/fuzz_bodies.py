"""What the fuzz run (``fuzz.py``) sends: Hypothesis strategies of request bodies for every route
it probes (OpenAI, Responses, vLLM, LoRAX, SGLang and the adapter routes).

Bodies are mostly well-formed JSON objects of the routes' own fields holding hostile values (lone
surrogates, NULs, huge or non-finite numbers, wrong types).  Generation stays short
(``max_tokens`` at most 4 when it is a valid number).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Any code point, lone surrogates and NUL included (Hypothesis leaves surrogates out by default).
ANY_TEXT = st.text(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=12
) | st.sampled_from(["", "a\ud800b", "\x00", "\udfff"])
TEXT = st.text(max_size=12)  # valid text: any character but lone surrogates
NUMBERS = st.sampled_from(
    [0, 1, -1, 2, 0.5, 1e-300, 1e300, -1e300, 2**31, 2**63, 2**64, -(2**63) - 1, 2**100]
) | st.floats(allow_nan=False, allow_infinity=False)
SCALARS = NUMBERS | ANY_TEXT | st.booleans() | st.none()
HOSTILE = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(ANY_TEXT, c, max_size=3), max_leaves=6)  # fmt: skip
NON_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity"])  # spliced into the JSON text
SMALL_MAX = st.integers(1, 4)
TOKEN_IDS = st.lists(st.integers(0, 1023), min_size=1, max_size=6)
BAD_TOKEN_IDS = st.lists(st.integers(0, 1100) | st.sampled_from([-1, 2**32, 2**64]), max_size=6)
# vLLM's prompt_logprobs: served in [0, 20]; -1 (the whole vocabulary), huge, negative, strings
PROMPT_LOGPROBS = st.integers(0, 5) | st.sampled_from(
    [20, 21, -1, -7, 2**31, 2**64, 10**30, "3", "many", 2.5, True, [1]]
)
# SGLang's logprob_start_len: -1 (default), a prompt position, past the prompt, or hostile
LOGPROB_START_LEN = st.integers(-2, 8) | st.sampled_from([2**31, -(2**63), 10**30, "0", 0.5])


def body(
    required: dict[str, st.SearchStrategy], optional: dict[str, st.SearchStrategy]
) -> st.SearchStrategy[dict[str, Any]]:
    """Valid objects of these fields (required ones, any subset of the optional ones), half of
    them with one field replaced by a hostile value (a wrong type, lone surrogates, ...)."""
    fields = sorted({*required, *optional})
    valid = st.fixed_dictionaries(required, optional=optional)
    override = st.none() | st.tuples(st.sampled_from(fields), HOSTILE)
    return st.tuples(valid, override).map(lambda p: {**p[0], **dict([p[1]] if p[1] else [])})


SAMPLING: dict[str, st.SearchStrategy] = {
    "temperature": st.floats(0, 2) | st.just(1e-300), "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, 50), "min_p": st.floats(0, 1), "seed": st.integers(0, 2**64 - 1),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.01, 2) | st.just(1e-300), "n": st.integers(1, 2),
    "stop": TEXT | st.lists(TEXT, max_size=3), "stop_token_ids": TOKEN_IDS,
    "logit_bias": st.dictionaries(st.integers(0, 1023).map(str), st.floats(-100, 100), max_size=3),
    "ignore_eos": st.booleans(), "user": TEXT, "stream": st.booleans(),
    "stream_options": st.just({"include_usage": True}),
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]),
    "guided_choice": st.lists(TEXT, min_size=1, max_size=3), "guided_regex": st.sampled_from(["[a-z]+", "(ab|cd)*", "\\d{1,3}"]),
    "min_tokens": st.integers(0, 6), "include_stop_str_in_output": st.booleans(),
    "skip_special_tokens": st.booleans(), "truncate_prompt_tokens": st.integers(1, 8),
    "prompt_logprobs": PROMPT_LOGPROBS,
    "allowed_token_ids": st.lists(st.integers(0, 1023), max_size=4) | BAD_TOKEN_IDS,
    "bad_words": st.lists(TEXT, max_size=3),
}  # fmt: skip


def completion_bodies(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    prompt = (
        TEXT.filter(str.strip) | TOKEN_IDS | st.lists(TEXT, min_size=1, max_size=2) | BAD_TOKEN_IDS
    )
    required = {"model": st.sampled_from(models), "prompt": prompt, "max_tokens": SMALL_MAX}
    return body(required, {**SAMPLING, "echo": st.booleans(), "logprobs": st.integers(0, 5)})


# Tool calling: well-formed tools with small schemas, choices among them and hostile ones.
TOOL_NAMES = st.sampled_from(["get_weather", "lookup", "a.b-c_1"]) | TEXT
PARAMETERS = st.sampled_from([
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 3}}},
    {"type": "object", "properties": {"n": {"enum": [1, 2]}}, "required": ["n"]},
    {"type": "object"}, {}, {"type": "array"}, {"type": 5}, {"$ref": "#/nowhere"},
])  # fmt: skip
TOOL = st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": TOOL_NAMES}, optional={"parameters": PARAMETERS, "description": TEXT})},
)  # fmt: skip
TOOL_CHOICE = st.sampled_from(["auto", "none", "required", "any"]) | st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": TOOL_NAMES})}
)
PAST_CALL = st.fixed_dictionaries(
    {"id": TEXT, "type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": TEXT, "arguments": st.sampled_from(['{"city": "x"}', "[]", "not json", ""])})},
)  # fmt: skip


def chat_bodies(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    part = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
    message = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool"]),
            "content": TEXT | st.lists(part, max_size=2) | st.none(),
        },
        optional={"tool_calls": st.lists(PAST_CALL, max_size=2), "tool_call_id": TEXT},
    )
    required = {
        "model": st.sampled_from(models),
        "messages": st.lists(message, min_size=1, max_size=3),
        "max_tokens": SMALL_MAX,
    }
    extra = {
        **SAMPLING,
        "logprobs": st.just(True),
        "top_logprobs": st.integers(0, 5),
        "max_completion_tokens": SMALL_MAX,
        "tools": st.lists(TOOL, max_size=3),
        "tool_choice": TOOL_CHOICE,
        "parallel_tool_calls": st.booleans(),
        "chat_template_kwargs": st.dictionaries(
            st.sampled_from(["enable_thinking", "messages", "x-y", "tools"]) | TEXT,
            HOSTILE,
            max_size=2,
        ),
    }
    return body(required, extra)  # fmt: skip


def tgi_bodies(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """LoRAX / TGI ``/generate`` bodies: ``inputs`` and ``parameters``."""
    optional = {
        "adapter_id": st.sampled_from(models) | TEXT,
        "adapter_source": st.sampled_from(["hub", "local", "s3"]),
        # LoRAX's merges: the demo adapters differ in rank, so most merges fail on the worker
        "merged_adapters": st.fixed_dictionaries(
            {"ids": st.lists(st.sampled_from(models) | TEXT, max_size=3)},
            optional={
                "weights": st.lists(st.floats(-2, 2) | HOSTILE, max_size=3),
                "merge_strategy": st.sampled_from(["linear", "ties", "dare_ties", "x"]),
                "density": st.floats(-1, 2) | HOSTILE,
                "majority_sign_method": st.sampled_from(["total", "frequency", None]),
            },
        )
        | HOSTILE,
        "do_sample": st.booleans(),
        "temperature": st.floats(0.01, 2),
        "top_p": st.floats(0.01, 1),
        "top_k": st.integers(-1, 50),
        "decoder_input_details": st.booleans(),
        "repetition_penalty": st.floats(0.01, 2),
        "seed": st.integers(0, 2**64 - 1),
        "stop": st.lists(TEXT, max_size=2),
        "truncate": st.integers(1, 8),
        "return_full_text": st.booleans(),
        "details": st.booleans(),
        "best_of": st.integers(1, 2),
        "typical_p": st.sampled_from([None, 1.0, 0.5]) | st.floats(0, 1.5),
        "grammar": st.sampled_from(
            [
                {"type": "json", "value": {"type": "object"}},
                {"type": "regex", "value": "[a-z]+"},
                {"type": "x"},
            ]
        ),
    }
    parameters = body({"max_new_tokens": SMALL_MAX}, optional)
    return body({"inputs": TEXT.filter(str.strip), "parameters": parameters}, {"stream": st.booleans()})  # fmt: skip


def responses_bodies(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """OpenAI Responses API bodies: input as text or items, tools, text.format."""
    part = st.fixed_dictionaries(
        {"type": st.sampled_from(["input_text", "output_text", "input_image"]), "text": TEXT}
    )
    message = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "developer", "tool"]),
            "content": TEXT | st.lists(part, max_size=2),
        }
    )
    call = st.fixed_dictionaries(
        {
            "type": st.just("function_call"),
            "call_id": TEXT,
            "name": TOOL_NAMES,
            "arguments": st.sampled_from(['{"city": "x"}', "[]", "nope"]),
        }
    )
    output = st.fixed_dictionaries(
        {"type": st.just("function_call_output"), "call_id": TEXT, "output": TEXT}
    )
    items = st.lists(
        message | call | output | st.fixed_dictionaries({"type": TEXT}), min_size=1, max_size=3
    )
    function = st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "web_search"]), "name": TOOL_NAMES},
        optional={"parameters": PARAMETERS},
    )
    optional = {
        "instructions": TEXT,
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "stream": st.booleans(),
        "tools": st.lists(function, max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "text": st.sampled_from(
            [
                {"format": {"type": "json_object"}},
                {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
                {"format": {"type": "xml"}},
            ]
        ),
        "previous_response_id": TEXT,
        "store": st.booleans(),
        "metadata": st.dictionaries(TEXT, TEXT, max_size=20),
        "background": st.booleans(),
        "conversation": TEXT,
    }
    required = {
        "model": st.sampled_from(models),
        "input": TEXT.filter(str.strip) | items,
        "max_output_tokens": SMALL_MAX,
    }
    return body(required, optional)  # fmt: skip


def sglang_bodies(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """SGLang ``/generate`` bodies: text or input_ids (one or a batch), sampling_params."""
    sampling = body(
        {"max_new_tokens": SMALL_MAX},
        {
            "temperature": st.floats(0, 2),
            "top_p": st.floats(0.01, 1),
            "top_k": st.integers(-1, 50),
            "min_new_tokens": st.integers(0, 6),
            "stop": TEXT | st.lists(TEXT, max_size=2),
            "n": st.integers(1, 2),
            "regex": st.sampled_from(["[a-z]+", "(ab"]),
            "no_stop_trim": st.booleans(),
            "sampling_seed": st.integers(0, 2**64 - 1),
        },
    )
    prompt = st.one_of(
        st.fixed_dictionaries(
            {
                "text": TEXT.filter(str.strip)
                | st.lists(TEXT.filter(str.strip), min_size=1, max_size=2)
            }
        ),
        st.fixed_dictionaries(
            {"input_ids": TOKEN_IDS | BAD_TOKEN_IDS | st.lists(TOKEN_IDS, min_size=1, max_size=2)}
        ),
    )
    optional = {
        "lora_path": st.sampled_from(models) | st.lists(st.sampled_from(models), max_size=2),
        "stream": st.booleans(),
        "return_logprob": st.booleans(),
        "logprob_start_len": LOGPROB_START_LEN,
        "top_logprobs_num": st.integers(0, 3) | st.sampled_from([20, 21, -1]),
        "return_text_in_logprobs": st.booleans(),
    }
    return st.tuples(prompt, body({"sampling_params": sampling}, optional)).map(lambda p: {**p[0], **p[1]})  # fmt: skip


def tokenize_bodies(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    message = st.fixed_dictionaries({"role": st.just("user"), "content": TEXT})
    either = st.one_of(
        st.fixed_dictionaries({"prompt": TEXT}),
        st.fixed_dictionaries({"messages": st.lists(message, min_size=1, max_size=2)}),
    )
    optional = {
        "model": st.sampled_from(models),
        "add_special_tokens": st.booleans(),
        "return_token_strs": st.booleans(),
        "tools": st.lists(TOOL, max_size=2),
    }
    return st.tuples(either, body({}, optional)).map(lambda p: {**p[0], **p[1]})  # fmt: skip


def detokenize_bodies(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return body({"tokens": TOKEN_IDS | BAD_TOKEN_IDS}, {"model": st.sampled_from(models)})


NAMES = st.text(st.characters(codec="ascii", categories=["Ll", "Nd"]), min_size=1, max_size=8).map(
    lambda s: f"fz-{s}"
)
PATHS = st.sampled_from(["..", "/etc", "a/../../b", "/", "", "nope"]) | TEXT


def registration_bodies() -> st.SearchStrategy[dict[str, Any]]:
    required = {"name": NAMES, "path": PATHS}
    return body(
        required, {"visibility": st.sampled_from(["private", "public"]), "replace": st.booleans()}
    )


def load_lora_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return body({"lora_name": NAMES, "lora_path": PATHS}, {"load_inplace": st.booleans()})


CONFIG_FIELDS = (
    "r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules", "use_rslora",
    "modules_to_save", "peft_type", "use_dora", "fan_in_fan_out", "bias", "layers_to_transform",
)  # fmt: skip


def config_edits() -> st.SearchStrategy[dict[str, Any]]:
    """Changes to a valid adapter config: a few of its fields set to hostile values."""
    pattern = st.dictionaries(
        TEXT | st.sampled_from(["q_proj", "v_proj", "(", "["]), SCALARS, max_size=2
    )
    value = SCALARS | pattern | st.lists(TEXT | st.sampled_from(["q_proj", "v_proj"]), max_size=3)
    return st.dictionaries(st.sampled_from(CONFIG_FIELDS), value, min_size=1, max_size=3)  # fmt: skip
