"""The hostile-input table: every case of issue 13 that must be a 4xx (or tokens), never a 5xx.

A ``Case`` is one HTTP request sent by a tenant (BETA unless said otherwise) and the statuses it
may get.  Bodies are built against a ``CaseContext`` (the served model id, a valid adapter to break,
the server's adapters root).  Bodies with lone surrogates or bad bytes are sent as raw bytes, since
an HTTP client would refuse to encode them.  Shared by tests/hostile and bench/reliability.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.hostile.adapter_files import (
    DELETE,
    PICKLE,
    AdapterFiles,
    fill,
    pickle_bytes,
    poke,
    rank_zero,
)
from tests.hostile.harness import BETA, HostileStack, StackBroken, assert_openai_error, other

Body = dict[str, Any]  # httpx keyword arguments: json= / content= + headers= / files= + data=
ANY_4XX = tuple(range(400, 500))
TOKENS_OR_400 = (200, 400)


_NAMES = itertools.count(1)  # one sequence per process: names never repeat on a stack


@dataclass(frozen=True)
class CaseContext:
    model_id: str
    adapters_root: Path
    template: AdapterFiles = field(repr=False)

    def fresh_name(self) -> str:
        return f"hostile-{next(_NAMES)}"


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: Callable[[CaseContext], Body] = field(repr=False)
    expect: tuple[int, ...] = (400,)
    says: str | None = None  # the error message must name this (case-insensitive)
    method: str = "POST"
    tenant: str = BETA


@dataclass(frozen=True)
class CaseResult:
    case: Case
    status: int | None  # None: the connection dropped without an answer
    problems: list[str]  # empty: as expected, and the stack is healthy
    broke_stack: bool  # a process exited or restarted, or the other tenant was not served


def send(hs: HostileStack, case: Case, ctx: CaseContext) -> httpx.Response:
    """The case's request, its whole answer read (a dropped connection raises)."""
    with hs.http(case.tenant) as client:
        return client.request(case.method, case.path, **case.body(ctx))


def run_case(hs: HostileStack, case: Case, ctx: CaseContext) -> CaseResult:
    """Send the case, check its answer, then check that the other tenant is still served and
    that no process exited."""
    problems: list[str] = []
    status = None
    try:
        r = send(hs, case, ctx)
        status = r.status_code
        check_answer(r, case)
    except httpx.TransportError as e:
        problems.append(f"no answer: {e!r}")
    except AssertionError as e:
        problems.append(str(e))
    broke = False
    try:
        hs.assert_healthy(other(case.tenant))
    except StackBroken as e:
        problems.append(str(e))
        broke = True
    return CaseResult(case, status, problems, broke)


def check_answer(r: httpx.Response, case: Case) -> None:
    """A 2xx is a complete answer (a finished SSE stream has no error event); an error is an
    OpenAI error body naming ``case.says``.  Raises AssertionError otherwise."""
    err = assert_openai_error(r, case.expect)
    if err and case.says:
        assert case.says.lower() in err["message"].lower(), (
            f"message should name {case.says!r}: {err}"
        )
    if r.status_code == 200 and r.headers.get("content-type", "").startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]"), f"stream did not finish: {r.text[-400:]}"
        assert '"error"' not in r.text, f"stream carried an error event: {r.text[-600:]}"
    elif r.status_code == 200 and case.path.endswith("completions"):
        assert r.json()["choices"], r.text[:400]


# ---- bodies ------------------------------------------------------------------------------------
def raw(obj: Any) -> Body:
    """JSON with ASCII escapes, so a lone surrogate is sent as the 6 characters ``\\ud800``."""
    return {"content": json.dumps(obj).encode(), "headers": {"content-type": "application/json"}}


def raw_bytes(data: bytes) -> Body:
    return {"content": data, "headers": {"content-type": "application/json"}}


def completion(**fields: Any) -> Callable[[CaseContext], Body]:
    return lambda c: raw(
        {"model": c.model_id, "prompt": "Hello Hello Hello", "max_tokens": 8, **fields}
    )


def chat(content: Any = "Hello", **fields: Any) -> Callable[[CaseContext], Body]:
    msgs = [{"role": "user", "content": content}]
    return lambda c: raw({"model": c.model_id, "messages": msgs, "max_tokens": 8, **fields})


def completion_text(fragment: str) -> Callable[[CaseContext], Body]:
    """A completion body with ``fragment`` spliced in as written (NaN, Infinity, bad bytes)."""
    return lambda c: raw_bytes(
        f'{{"model": "{c.model_id}", "prompt": "Hello", "max_tokens": 4, {fragment}}}'.encode()
    )


def upload(
    edit: Callable[[AdapterFiles], AdapterFiles], name: str | None = None
) -> Callable[[CaseContext], Body]:
    """A multipart upload of the template adapter after ``edit``."""
    return lambda c: edit(c.template).multipart(name or c.fresh_name())


def config(**changes: Any) -> Callable[[CaseContext], Body]:
    return upload(lambda t: t.with_config(**changes))


def tensors(fn: Callable) -> Callable[[CaseContext], Body]:  # type: ignore[type-arg]
    return upload(lambda t: t.with_tensors(fn))


def by_path(
    edit: Callable[[AdapterFiles], AdapterFiles], vllm: bool = False
) -> Callable[[CaseContext], Body]:
    """A folder written under the server's adapters root, registered by path."""

    def body(c: CaseContext) -> Body:
        name = c.fresh_name()
        edit(c.template).write(c.adapters_root / name)
        if vllm:
            return {"json": {"lora_name": name, "lora_path": name}}
        return {"json": {"name": name, "path": name}}

    return body


# ---- the table ---------------------------------------------------------------------------------
# fmt: off
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
# fmt: on

ALL_CASES = SAMPLING_CASES + UNICODE_CASES + ADAPTER_CASES
