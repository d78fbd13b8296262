"""Batches of hostile requests on the real stack: every line of a batch of fuzzed chat,
completion and Responses API bodies is answered (a 200 or a 4xx with an OpenAI error body, never a 5xx), each once
and in order; lines no JSON route would take (lone surrogates, NUL in a name) refuse the file with
their line numbers; a file of raw bytes is refused; and the stack, both tenants, stays served."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.gateway.body_check import value_problem
from tests.hostile.fuzz import FUZZ_SETTINGS
from tests.hostile.fuzz_bodies import chat_bodies, completion_bodies, responses_bodies
from tests.hostile.harness import ALPHA, BETA, HostileStack

ENDPOINTS = {
    "/v1/chat/completions": (chat_bodies, 24),
    "/v1/completions": (completion_bodies, 12),
    "/v1/responses": (responses_bodies, 12),
}


def drawn(strategy: st.SearchStrategy[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` bodies as the fuzz run draws them (varied, the same on every run)."""
    out: list[dict[str, Any]] = []

    @settings(FUZZ_SETTINGS, max_examples=n)
    @given(strategy)
    def draw(body: dict[str, Any]) -> None:
        out.append(body)

    draw()
    return out


def run_batch(client: openai.OpenAI, endpoint: str, lines: list[str], timeout: float = 180) -> Any:
    data = "".join(line + "\n" for line in lines).encode()
    f = client.files.create(file=("fuzz.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while batch.status in ("in_progress", "finalizing", "cancelling"):
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout}s"
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    return batch


def rows(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_hostile_batches_answer_every_line_and_hurt_no_one(hs: HostileStack) -> None:
    client = hs.openai(BETA)
    models = [hs.model_id, *hs.demo_adapters[:2], "no-such-model"]
    for endpoint, (bodies, n) in ENDPOINTS.items():
        clean, unclean = [], []
        for i, body in enumerate(drawn(bodies(models), n)):
            body.pop("stream", None)  # a batch refuses streams (tested in the gateway's tests)
            line = json.dumps(
                {"custom_id": f"c{i}", "method": "POST", "url": endpoint, "body": body}
            )
            # what the HTTP edge would refuse as a request body refuses the whole file
            (unclean if value_problem(body) else clean).append(line)
        batch = run_batch(client, endpoint, clean)
        assert batch.status == "completed", batch
        out, errs = rows(client, batch.output_file_id), rows(client, batch.error_file_id)
        assert sorted(r["custom_id"] for r in out + errs) == sorted(
            json.loads(line)["custom_id"] for line in clean
        )
        assert batch.request_counts.total == len(clean) == len(out) + len(errs)
        print(
            endpoint,
            len(out),
            len(errs),
            len(unclean),
            sorted({r["response"]["status_code"] for r in errs}),
        )
        for r in out:
            answer = r["response"]["body"]
            assert r["response"]["status_code"] == 200, r
            assert answer["choices"] if "choices" in answer else answer["object"] == "response", r
        for r in errs:
            status, err = r["response"]["status_code"], r["response"]["body"]["error"]
            assert 400 <= status < 500, r
            assert set(err) == {"message", "type", "param", "code"}, r
        if unclean:  # each refuses the file, named by its line
            refused = run_batch(client, endpoint, [*clean[:2], *unclean])
            assert refused.status == "failed"
            assert [e.line for e in refused.errors.data] == list(range(3, 3 + len(unclean)))
    junk = run_batch(client, "/v1/chat/completions", [b"\x00\xff\xfe junk".decode("latin-1")])
    assert junk.status == "failed" and junk.errors.data[0].line == 1
    hs.assert_healthy(ALPHA)
    hs.assert_healthy(BETA)


def test_a_batch_cannot_store_more_than_its_tenant_may(hs: HostileStack) -> None:
    """The red team's batches (2026-12-08), small: lines asking for many echoed choices with
    logprobs still end with every line in the output or error file (a line too large is its own
    4xx error), their answers leave the store once written, and a failed batch with the most
    metadata and a file of repeated 512-character custom_ids is stored as a few KiB."""
    client = hs.openai(BETA)
    body = {"model": hs.model_id, "prompt": list(range(10, 110)), "max_tokens": 1, "n": 16,
            "echo": True, "logprobs": 20, "prompt_logprobs": 20}  # fmt: skip
    lines = [json.dumps({"custom_id": f"big{i}", "method": "POST", "url": "/v1/completions",
                         "body": body}) for i in range(4)]  # fmt: skip
    batch = run_batch(client, "/v1/completions", lines)
    assert batch.status == "completed", batch
    out, errs = rows(client, batch.output_file_id), rows(client, batch.error_file_id)
    assert sorted(r["custom_id"] for r in out + errs) == [f"big{i}" for i in range(4)]
    assert batch.request_counts.completed + batch.request_counts.failed == 4
    for r in errs:
        assert 400 <= r["response"]["status_code"] < 500, r
    long_id = "c" * 512
    same = [json.dumps({"custom_id": long_id, "method": "POST", "url": "/v1/completions",
                        "body": {"model": hs.model_id, "prompt": "x"}}) for _ in range(101)]  # fmt: skip
    f = client.files.create(file=("same.jsonl", "\n".join(same).encode()), purpose="batch")
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    for _ in range(3):
        failed = client.batches.create(
            input_file_id=f.id, endpoint="/v1/completions", completion_window="24h",
            metadata=metadata,
        )  # fmt: skip
        assert failed.status == "failed" and failed.metadata == metadata
        assert len(failed.model_dump_json()) < 16_000
    hs.assert_healthy(ALPHA)
    hs.assert_healthy(BETA)
