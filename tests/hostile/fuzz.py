"""A bounded, reproducible fuzz run of the gateway: generation routes, /tokenize, /detokenize and the
adapter routes, with bodies drawn by Hypothesis (derandomized, so every run sends the same cases).

Bodies are mostly well-formed JSON objects of the routes' own fields holding hostile values (lone
surrogates, NULs, huge or non-finite numbers, wrong types), plus raw bytes.  Generation stays short
(``max_tokens`` at most 4 when it is a valid number).  Every answer is recorded, not asserted inside
Hypothesis, so one run reports every failure: a 5xx, a dropped connection, an error without an
OpenAI error body, or a stream that does not end with ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.hostile.adapter_files import AdapterFiles
from tests.hostile.harness import BETA, HostileStack

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
        "do_sample": st.booleans(),
        "temperature": st.floats(0.01, 2),
        "top_p": st.floats(0.01, 1),
        "top_k": st.integers(-1, 50),
        "repetition_penalty": st.floats(0.01, 2),
        "seed": st.integers(0, 2**64 - 1),
        "stop": st.lists(TEXT, max_size=2),
        "truncate": st.integers(1, 8),
        "return_full_text": st.booleans(),
        "details": st.booleans(),
        "best_of": st.integers(1, 2),
        "typical_p": st.sampled_from([None, 1.0, 0.5]),
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
        "metadata": st.dictionaries(TEXT, TEXT, max_size=2),
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


@dataclass(frozen=True)
class Probe:
    """One fuzz request: method, path and httpx keyword arguments."""

    route: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(repr=False)
    shown: str  # what to print for it

    @classmethod
    def json(cls, route: str, path: str, body: dict[str, Any], non_finite: str | None) -> Probe:
        text = json.dumps(body)  # ASCII escapes: lone surrogates are sent as \ud800
        if non_finite is not None and text.startswith("{") and len(text) > 2:
            text = text[:-1] + f', "temperature": {non_finite}}}'
        kwargs = {"content": text.encode(), "headers": {"content-type": "application/json"}}
        return cls(route, "POST", path, kwargs, text[:300])


@dataclass
class FuzzLog:
    """Every answer of a fuzz run, and the ones that are failures."""

    tried: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    def record(self, probe: Probe, r: httpx.Response | None, problem: str | None) -> None:
        self.tried += 1
        if r is not None:
            self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        if problem:
            self.failures.append(f"{probe.route} {probe.shown} -> {problem}")


def judge(r: httpx.Response) -> str | None:
    """None if the answer is acceptable; else what is wrong with it."""
    if r.status_code >= 500:
        return f"{r.status_code}: {r.text[:200]}"
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            assert isinstance(err["message"], str) and isinstance(err["type"], str)
        except Exception:
            return f"{r.status_code} without an OpenAI error body: {r.text[:200]}"
    elif r.headers.get("content-type", "").startswith("text/event-stream"):
        if r.request.url.path in ("/", "/generate_stream") or (
            r.request.url.path == "/generate" and not r.text.rstrip().endswith("data: [DONE]")
        ):  # /generate: LoRAX's events, or SGLang's, which end with [DONE]
            return _tgi_stream_problem(r.text)
        if r.request.url.path == "/v1/responses":
            last = r.text.strip().split("\n\n")[-1]
            if not last.startswith(
                ("event: response.completed", "event: response.incomplete", "event: error")
            ):
                return f"Responses stream did not end with its last event: {r.text[-200:]}"
            return None
        if not r.text.rstrip().endswith("data: [DONE]"):
            return f"stream did not end with [DONE]: {r.text[-200:]}"
    return None


def _tgi_stream_problem(text: str) -> str | None:
    """A TGI stream ends with an event that has ``generated_text``, or with an ``error`` one."""
    events = [e for e in text.split("\n\n") if e.strip()]
    try:
        last = json.loads(events[-1][len("data:") :])
    except (IndexError, ValueError):
        return f"TGI stream without a last event: {text[-200:]}"
    if last.get("generated_text") is None and not last.get("error"):
        return f"TGI stream did not end with generated_text: {text[-200:]}"
    return None


def send(client: httpx.Client, probe: Probe, log: FuzzLog) -> None:
    try:
        r = client.request(probe.method, probe.path, **probe.kwargs)
    except httpx.TransportError as e:
        log.record(probe, None, f"no answer ({e!r})")
        return
    log.record(probe, r, judge(r))


FUZZ_SETTINGS = settings(
    derandomize=True,  # the same cases on every run (CI, bench)
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # answers are recorded, nothing to shrink
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def route_plans(
    hs: HostileStack, template: AdapterFiles
) -> list[tuple[str, int, st.SearchStrategy[Probe]]]:
    """(route, examples, strategy of probes) for every fuzzed route; about 750 probes in all."""
    models = [hs.model_id, *hs.demo_adapters[:2], "no-such-model"]
    non_finite = st.none() | st.none() | st.none() | NON_FINITE

    def as_json(route: str, path: str, bodies: st.SearchStrategy) -> st.SearchStrategy[Probe]:
        return st.builds(lambda b, nf: Probe.json(route, path, b, nf), bodies, non_finite)

    def upload(edits: dict[str, Any], name: str) -> Probe:
        files = template.with_config(**edits)
        return Probe(
            "adapters multipart",
            "POST",
            "/v1/adapters",
            files.multipart(name, replace="true"),
            f"{name} {edits!r}"[:300],
        )

    def named(method: str) -> Callable[[str], Probe]:
        return lambda name: Probe(
            f"{method} adapter",
            method,
            "/v1/adapters/" + quote(name.encode("utf-8", "surrogatepass"), safe=""),
            {},
            repr(name),
        )

    raw = st.builds(
        lambda path, data: Probe(
            "raw bytes",
            "POST",
            path,
            {"content": data, "headers": {"content-type": "application/json"}},
            repr(data[:80]),
        ),
        st.sampled_from(
            [
                "/v1/completions",
                "/v1/chat/completions",
                "/tokenize",
                "/v1/adapters",
                "/v1/load_lora_adapter",
            ]
        ),
        st.binary(max_size=64) | st.just(b'{"model": "\xff"}'),
    )
    return [
        ("completions", 150, as_json("completions", "/v1/completions", completion_bodies(models))),
        ("chat", 100, as_json("chat", "/v1/chat/completions", chat_bodies(models))),
        ("tokenize", 60, as_json("tokenize", "/tokenize", tokenize_bodies(models))),
        ("detokenize", 40, as_json("detokenize", "/detokenize", detokenize_bodies(models))),
        ("generate", 40, as_json("generate", "/generate", tgi_bodies(models))),
        ("responses", 50, as_json("responses", "/v1/responses", responses_bodies(models))),
        ("sglang generate", 40, as_json("sglang generate", "/generate", sglang_bodies(models))),
        ("generate_stream", 20, as_json("generate_stream", "/generate_stream", tgi_bodies(models))),
        ("adapters path", 40, as_json("adapters path", "/v1/adapters", registration_bodies())),
        ("load_lora_adapter", 30, as_json("load_lora_adapter", "/v1/load_lora_adapter", load_lora_bodies())),
        ("adapters multipart", 100, st.builds(upload, config_edits(), NAMES | ANY_TEXT)),
        ("GET adapter", 20, (NAMES | ANY_TEXT).map(named("GET"))),
        ("DELETE adapter", 20, (NAMES | ANY_TEXT).map(named("DELETE"))),
        ("raw bytes", 40, raw),
    ]  # fmt: skip


def run_fuzz(hs: HostileStack, template: AdapterFiles, scale: float = 1.0) -> FuzzLog:
    """Send every route's probes as BETA; ``scale`` multiplies the number of examples."""
    log = FuzzLog()
    with hs.http(BETA, timeout=60) as client:
        for _, examples, probes in route_plans(hs, template):

            @settings(FUZZ_SETTINGS, max_examples=max(1, int(examples * scale)))
            @given(probes)
            def fuzz_route(probe: Probe) -> None:
                send(client, probe, log)

            fuzz_route()
    return log
