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
