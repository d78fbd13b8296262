"""Hostile-input cases: what one is, how it is sent and judged (the table is in case_table.py).

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

from tests.hostile.adapter_files import AdapterFiles
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
