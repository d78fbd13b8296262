"""Every error is an OpenAI error body with the right status (httpx, real NATS and Redis)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import ALICE, MODEL_ID, FakeScheduler, GatewayFactory, Plan

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def completion(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "prompt": "Hello there", "max_tokens": 8, **kw}


def assert_error(
    r: httpx.Response,
    status: int,
    *,
    code: str | None = None,
    param: str | None = None,
    says: str = "",
) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    assert says in err["message"], err
    return err


async def test_auth(gateway: str, scheduler: FakeScheduler) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        r = await http.post(COMPLETIONS, json=completion())
        err = assert_error(r, 401, code="invalid_api_key", says="missing API key")
        assert r.headers["www-authenticate"] == "Bearer" and err["type"] == "authentication_error"
        r = await http.post(
            COMPLETIONS, json=completion(), headers={"Authorization": "Bearer sk-nope"}
        )
        assert "sk-nope" not in assert_error(r, 401, code="invalid_api_key")["message"]
        assert_error(await http.get("/v1/models", headers={"Authorization": "Basic abc"}), 401)
        assert_error(await http.get("/v1/adapters"), 401)
        # auth comes before body validation
        assert_error(await http.post(CHAT, json={"model": 3}), 401)
    assert scheduler.submits == []


async def test_unknown_model_and_routes(gateway: str, scheduler: FakeScheduler) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(COMPLETIONS, json=completion(model="gpt-17"))
        assert_error(r, 404, code="model_not_found", param="model", says="gpt-17")
        r = await http.post(
            CHAT, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        )
        assert_error(r, 404, code="model_not_found")
        assert_error(await http.get("/v1/models/nope"), 404, code="model_not_found")
        assert (await http.get(f"/v1/models/{MODEL_ID}")).json()["id"] == MODEL_ID
        assert_error(await http.get("/v1/nothing-here"), 404)
        assert_error(await http.get(COMPLETIONS), 405)
    assert scheduler.submits == []


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        (COMPLETIONS, completion(temperature=-0.5), "temperature", "temperature must be >= 0"),
        (COMPLETIONS, completion(top_p=1.5), "top_p", "top_p must be in (0, 1]"),
        (COMPLETIONS, completion(top_p=0), "top_p", "top_p"),
        (COMPLETIONS, completion(top_k=-3), "top_k", ""),
        (COMPLETIONS, completion(max_tokens=0), "max_tokens", "at least 1"),
        (COMPLETIONS, completion(max_tokens=-2), "max_tokens", "at least 1"),
        (COMPLETIONS, completion(prompt=""), "prompt", "must not be empty"),
        (COMPLETIONS, completion(prompt=[]), "prompt", "must not be empty"),
        (COMPLETIONS, completion(prompt=["a", " "]), "prompt[1]", "prompt[1]: prompt must not"),
        (COMPLETIONS, completion(prompt=[[5], []]), "prompt[1]", "prompt[1]: prompt must not"),
        (
            COMPLETIONS,
            completion(prompt=[[5], [3, 99999]]),
            "prompt[1]",
            "prompt[1]: prompt token id 99999",
        ),
        (
            COMPLETIONS,
            completion(prompt=["a", "b" * 300]),
            "prompt[1]",
            "prompt[1]: This model's maximum",
        ),
        (COMPLETIONS, completion(prompt=["a"] * 17, n=16), "prompt", "272 requests; at most 256"),
        (COMPLETIONS, completion(prompt=["a", [5]]), None, ""),
        (COMPLETIONS, completion(prompt=[5, 99999]), "prompt", "outside the vocabulary"),
        (COMPLETIONS, completion(n=17), "n", "16"),
        (COMPLETIONS, completion(n=0), "n", ""),
        (COMPLETIONS, completion(presence_penalty=3), "presence_penalty", "[-2, 2]"),
        (COMPLETIONS, completion(frequency_penalty=-2.5), "frequency_penalty", "[-2, 2]"),
        (COMPLETIONS, completion(repetition_penalty=0), "repetition_penalty", "> 0"),
        (COMPLETIONS, completion(echo=True, max_tokens=-1), "max_tokens", "0 only with echo"),
        (COMPLETIONS, completion(logprobs=21), "logprobs", "[0, 20]"),
        (COMPLETIONS, completion(stop=["x", ""]), "stop", "must not be empty"),
        (COMPLETIONS, completion(temperature="hot"), "temperature", ""),
        (COMPLETIONS, {"prompt": "no model"}, "model", "Field required"),
        (COMPLETIONS, completion(prompt={"a": 1}), "prompt", ""),
        (CHAT, {"model": MODEL_ID, "messages": []}, "messages", ""),
        (CHAT, {"model": MODEL_ID, "messages": [{"content": "no role"}]}, "messages.0.role", ""),
        (
            CHAT,
            {
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            },
            "messages.0.content",
            "only text",
        ),
        (
            CHAT,
            {
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "x"}],
                "max_completion_tokens": 0,
            },
            "max_tokens",
            "",
        ),
        (
            CHAT,
            {"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "n": 20},
            "n",
            "",
        ),
        (
            CHAT,
            {"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
            "top_logprobs",
            "logprobs=true",
        ),
        (
            CHAT,
            {
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "x"}],
                "logprobs": True,
                "top_logprobs": 30,
            },
            "top_logprobs",
            "[0, 20]",
        ),
    ],
)
async def test_bad_params_are_400(
    gateway: str, scheduler: FakeScheduler, path: str, body: dict, param: str, says: str
) -> None:
    await assert_refused(gateway, scheduler, path, body, param, says)


async def assert_refused(
    gateway: str, scheduler: FakeScheduler, path: str, body: dict, param: str, says: str
) -> None:
    """A 400 ``invalid_request_error`` naming ``param`` and saying ``says``; nothing queued."""
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        err = assert_error(await http.post(path, json=body), 400, param=param, says=says)
    assert err["type"] == "invalid_request_error"
    assert scheduler.submits == []


async def test_bad_json_and_nan(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(
            COMPLETIONS, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_error(r, 400, says="not valid JSON")
        r = await http.post(
            COMPLETIONS,
            content=b'{"model": "demo-base", "prompt": "x", "temperature": NaN}',
            headers={"content-type": "application/json"},
        )
        assert_error(r, 400, param="temperature")
        assert_error(await http.post(COMPLETIONS), 400)


async def test_prompt_longer_than_context(gateway: str, scheduler: FakeScheduler) -> None:
    # max_model_len is 256 in these tests
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        ids = list(range(10, 210))  # 200 prompt tokens
        r = await http.post(COMPLETIONS, json=completion(prompt=ids, max_tokens=100))
        assert_error(
            r,
            400,
            code="context_length_exceeded",
            param="prompt",
            says="300 tokens (200 in the prompt, 100 for the completion)",
        )
        assert "256" in r.json()["error"]["message"]
        long_text = "the quick brown fox " * 200
        r = await http.post(
            CHAT, json={"model": MODEL_ID, "messages": [{"role": "user", "content": long_text}]}
        )
        assert_error(
            r,
            400,
            code="context_length_exceeded",
            param="messages",
            says="maximum context length is 256",
        )
    assert scheduler.submits == []


async def test_body_too_large(gateway_factory: GatewayFactory, scheduler: FakeScheduler) -> None:
    async with (
        gateway_factory(max_body_bytes=64 * 1024) as url,
        httpx.AsyncClient(base_url=url, headers=ALICE) as http,
    ):
        big = completion(prompt="x" * (100 * 1024))
        assert_error(
            await http.post(COMPLETIONS, json=big),
            413,
            code="request_too_large",
            says="65536 bytes",
        )

        async def chunks():  # no Content-Length: chunked transfer
            for _ in range(20):
                yield b"x" * 8192

        assert_error(await http.post(COMPLETIONS, content=chunks()), 413)
    assert scheduler.submits == []


async def test_default_body_limit_is_4mib(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(COMPLETIONS, json=completion(prompt="y" * (4 * 1024 * 1024 + 10)))
        assert_error(r, 413)


@pytest.mark.parametrize(
    ("code", "etype"), [(429, "rate_limit_error"), (503, "service_unavailable_error")]
)
async def test_scheduler_refusal(
    gateway: str, scheduler: FakeScheduler, code: int, etype: str
) -> None:
    scheduler.plan = lambda _: Plan(code=code, message=f"tenant alice: refused with {code}")
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        err = assert_error(
            await http.post(COMPLETIONS, json=completion()), code, says=f"refused with {code}"
        )
        assert err["type"] == etype
        r = await http.post(COMPLETIONS, json=completion(stream=True))  # before any SSE starts
        assert_error(r, code)
    assert len(scheduler.submits) == 2


async def test_no_scheduler_is_503(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        t0 = time.monotonic()
        r = await http.post(COMPLETIONS, json=completion())
        assert_error(r, 503, code="scheduler_unavailable", says="no scheduler")
        assert time.monotonic() - t0 < 2.0  # NATS "no responders": no waiting for a timeout


async def test_slow_scheduler_is_503_and_cancelled(
    gateway_factory: GatewayFactory, nats_url: str
) -> None:
    import nats

    from loraplex.protocol import CancelRequest, Subjects, SubmitRequest, decode

    nc = await nats.connect(nats_url)
    cancels: list[CancelRequest] = []
    submits: list[SubmitRequest] = []

    async def never_answer(msg) -> None:  # type: ignore[no-untyped-def]
        submits.append(decode(msg.data, SubmitRequest))

    async def on_cancel(msg) -> None:  # type: ignore[no-untyped-def]
        cancels.append(decode(msg.data, CancelRequest))

    await nc.subscribe(Subjects.SUBMIT, cb=never_answer)
    await nc.subscribe(Subjects.CANCEL, cb=on_cancel)
    await nc.flush()
    try:
        async with (
            gateway_factory(submit_timeout_s=0.3) as url,
            httpx.AsyncClient(base_url=url, headers=ALICE) as http,
        ):
            assert_error(
                await http.post(COMPLETIONS, json=completion()),
                503,
                says="did not answer within 0.3s",
            )
            for _ in range(100):
                if cancels:
                    break
                await asyncio.sleep(0.02)
            assert [c.request_id for c in cancels] == [submits[0].request_id]
    finally:
        await nc.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_worker_error_before_first_token(
    gateway: str, scheduler: FakeScheduler, stream: bool
) -> None:
    scheduler.plan = lambda _: Plan(tokens=[], error=(400, "adapter does not fit the base model"))
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(COMPLETIONS, json=completion(stream=stream))
        assert_error(r, 400, says="adapter does not fit")
    await asyncio.sleep(0.1)
    assert scheduler.cancels == []  # the worker already gave up on it


async def test_adapter_routes_validate_through_store_logic(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(
            "/v1/adapters", data={"name": "x"}, files=[("files", ("model.bin", b"x", "a/b"))]
        )
        assert_error(r, 400)
        assert_error(await http.get("/v1/adapters/nope"), 404, code="adapter_not_found")
        assert_error(await http.delete("/v1/adapters/nope"), 404)


async def test_no_redis_serves_base_model_only(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    scheduler.plan = lambda _: Plan(tokens=[10, 11])
    async with (
        gateway_factory(redis_url="") as url,
        httpx.AsyncClient(base_url=url, headers=ALICE) as http,
    ):
        assert [m["id"] for m in (await http.get("/v1/models")).json()["data"]] == [MODEL_ID]
        assert (await http.post(COMPLETIONS, json=completion())).status_code == 200
        assert_error(await http.post(COMPLETIONS, json=completion(model="demo-lora-0")), 404)
        assert_error(await http.get("/v1/adapters"), 503, code="store_unavailable")
