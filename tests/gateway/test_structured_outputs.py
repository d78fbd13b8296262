"""Output constraints at the gateway: every way of stating one reaches the scheduler as the same
``StructuredOutputsParams``; bad or conflicting ones are a 400 naming their field, and nothing is queued."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import ALICE, MODEL_ID, FakeScheduler
from tests.gateway.test_errors import CHAT, COMPLETIONS, assert_refused, completion

SCHEMA = {"type": "object", "properties": {"b": {"type": "boolean"}, "a": {"type": "integer"}}}


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], **kw}


JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}


@pytest.mark.parametrize(
    ("path", "body", "kind", "spec"),
    [
        (CHAT, chat(response_format=JSON_SCHEMA_FORMAT), "json", SCHEMA),
        (COMPLETIONS, completion(response_format=JSON_SCHEMA_FORMAT), "json", SCHEMA),
        (CHAT, chat(response_format={"type": "json_object"}), "json_object", ""),
        (CHAT, chat(structured_outputs={"json": SCHEMA}), "json", SCHEMA),
        (COMPLETIONS, completion(structured_outputs={"regex": "[ab]+"}), "regex", "[ab]+"),
        (COMPLETIONS, completion(guided_json=json.dumps(SCHEMA)), "json", SCHEMA),
        (COMPLETIONS, completion(guided_regex=r"\d{3}"), "regex", r"\d{3}"),
        (CHAT, chat(guided_choice=["yes", "no"]), "choice", ["yes", "no"]),
        (COMPLETIONS, completion(guided_grammar='root ::= "a"+'), "grammar", 'root ::= "a"+'),
    ],
)
async def test_every_form_reaches_the_scheduler(
    gateway: str, scheduler: FakeScheduler, path: str, body: dict, kind: str, spec: Any
) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(path, json=body)
    assert r.status_code == 200, r.text
    got = scheduler.submits[-1].sampling.structured_outputs
    assert got is not None and got.kind == kind
    if isinstance(spec, (dict, list)):
        assert json.loads(got.spec) == spec
        if isinstance(spec, dict):
            assert list(json.loads(got.spec)["properties"]) == ["b", "a"]  # order kept
    else:
        assert got.spec == spec


async def test_plain_requests_carry_no_constraint(gateway: str, scheduler: FakeScheduler) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(CHAT, json=chat(response_format={"type": "text"}))
    assert r.status_code == 200 and scheduler.submits[-1].sampling.structured_outputs is None


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        (CHAT, chat(response_format={"type": "json_schema"}), "response_format", "schema"),
        (CHAT, chat(response_format={"type": "yaml"}), "response_format", "not supported"),
        (CHAT, chat(guided_json='{"type": "nonsense"}'), "guided_json", "nonsense"),
        (COMPLETIONS, completion(guided_json="{not json"), "guided_json", "invalid json"),
        (COMPLETIONS, completion(guided_regex="(ab"), "guided_regex", "parenthesis"),
        (COMPLETIONS, completion(guided_grammar="root ::= "), "guided_grammar", "grammar"),
        (COMPLETIONS, completion(guided_choice=[]), "guided_choice", "non-empty"),
        (CHAT, chat(structured_outputs={"xml": "x"}), "structured_outputs", "unknown"),
        (CHAT, chat(structured_outputs={"json": SCHEMA, "regex": "a"}), "structured_outputs", ""),
        (
            CHAT,
            chat(response_format={"type": "json_object"}, guided_regex="a"),
            "guided_regex",
            "one output constraint",
        ),
    ],
)
async def test_bad_constraints_are_400(
    gateway: str, scheduler: FakeScheduler, path: str, body: dict, param: str, says: str
) -> None:
    await assert_refused(gateway, scheduler, path, body, param, says)


def _nested_arrays(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        # xgrammar needs about 46 s for arrays nested 1,000 deep (5 s for 400): refused first
        (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": _nested_arrays(400)}}), "response_format", "nests too deeply"),
        (COMPLETIONS, completion(guided_json=json.dumps(_nested_arrays(70))), "guided_json", "nests too deeply"),
        # deep enough that Python's own json gives up: still a 400, never a 500
        (COMPLETIONS, completion(guided_json="[" * 100_000 + "]" * 100_000), "guided_json", "invalid json"),
        (COMPLETIONS, completion(guided_json="[" * 140_000 + "]" * 140_000), "guided_json", "too long"),
        (COMPLETIONS, completion(guided_regex="a" * 300_000), "guided_regex", "too long"),
        (CHAT, chat(guided_choice=["x" * 1000] * 300), "guided_choice", "too long"),
        # repeats nested 3 deep: compiled at once, then seconds per token to match (red team)
        (COMPLETIONS, completion(guided_regex="(((a{0,50}){0,50}){0,50})"), "guided_regex", "nests repeats 3 deep"),
        (COMPLETIONS, completion(structured_outputs={"regex": "(?:(?:[a-z]+ ?)+,)*"}), "structured_outputs", "nests repeats 3 deep"),
        (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(((a{0,50}){0,50}){0,50})$"}}}}}), "response_format", "pattern nests repeats 3 deep"),
    ],
)  # fmt: skip
async def test_constraints_too_costly_to_compile_are_400(
    gateway: str, scheduler: FakeScheduler, path: str, body: dict, param: str, says: str
) -> None:
    await assert_refused(gateway, scheduler, path, body, param, says)
    # the gateway still answers at once (nothing was left compiling)
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE, timeout=5) as http:
        assert (await http.post(CHAT, json=chat())).status_code == 200


async def test_a_body_nested_too_deep_to_parse_is_a_400(
    gateway: str, scheduler: FakeScheduler
) -> None:
    body = '{"model": "demo-base", "messages": [{"role": "user", "content": "hi"}], "response_format": '
    body += "[" * 200_000 + "]" * 200_000 + "}"
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "error" in r.json() and scheduler.submits == []
