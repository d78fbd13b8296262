"""No oracle for other tenants' private adapter names: every answer bob gets about the name
``secret-a`` from every route of the gateway (adapter routes, vLLM's aliases, models, completions,
tokenize) is the same whether or not alice has a private adapter of that name.  Two gateways on
fresh key prefixes play the two worlds; real NATS and Redis, the fake scheduler for completions."""

from __future__ import annotations

from typing import Any

import httpx

from loraplex.tooling.demo import DemoModelInfo
from tests.gateway.conftest import (
    ALICE,
    BOB,
    FakeScheduler,
    GatewayFactory,
    Plan,
    register_adapter,
)

NAME = "secret-a"
RANDOM_IDS = ("cmpl-", "chatcmpl-")


def _stable(value: Any) -> Any:
    """An answer without what differs from call to call anyway (timestamps, request ids)."""
    if isinstance(value, dict):
        return {
            k: "<id>" if k == "id" and str(v).startswith(RANDOM_IDS) else _stable(v)
            for k, v in value.items()
            if k != "created"
        }
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


async def _answer(resp: httpx.Response) -> tuple[int, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    return resp.status_code, _stable(body)


async def _bobs_answers(http: httpx.AsyncClient, demo: DemoModelInfo) -> list[tuple[int, Any]]:
    """Every route bob can ask about ``NAME``, before and after he creates his own."""
    lora0, lora1 = demo.adapters
    path = {"name": NAME, "path": lora1.path.name}
    load = {"lora_name": NAME, "lora_path": lora1.path.name}
    completion = {"model": NAME, "prompt": "Hello", "max_tokens": 4}
    chat = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    async def multipart(**form: str) -> httpx.Response:
        return await register_adapter(http, lora1.path, NAME, BOB, **form)

    async def reads() -> list[httpx.Response]:
        return [
            await http.get(f"/v1/adapters/{NAME}", headers=BOB),
            await http.get("/v1/adapters", headers=BOB),
            await http.get("/v1/models", headers=BOB),
            await http.get(f"/v1/models/{NAME}", headers=BOB),
            await http.post("/v1/completions", json=completion, headers=BOB),
            await http.post("/v1/chat/completions", json=chat, headers=BOB),
            await http.post("/tokenize", json={"model": NAME, "prompt": "Hello"}, headers=BOB),
            await http.post("/detokenize", json={"model": NAME, "tokens": [5]}, headers=BOB),
        ]

    steps = [
        *await reads(),
        await http.delete(f"/v1/adapters/{NAME}", headers=BOB),
        await http.post("/v1/unload_lora_adapter", json={"lora_name": NAME}, headers=BOB),
        await multipart(),  # 201: the create that used to say "already taken"
        await multipart(),  # 409: bob's own name now
        await multipart(replace="true"),
        await http.post("/v1/adapters", json=path, headers=BOB),
        await http.post("/v1/adapters", json={**path, "replace": True}, headers=BOB),
        await http.post("/v1/load_lora_adapter", json=load, headers=BOB),
        await http.post("/v1/load_lora_adapter", json={**load, "load_inplace": True}, headers=BOB),
        *await reads(),
        await http.delete(f"/v1/adapters/{NAME}", headers=BOB),
        await http.post("/v1/load_lora_adapter", json=load, headers=BOB),
        await http.post("/v1/unload_lora_adapter", json={"lora_name": NAME}, headers=BOB),
        await http.post("/v1/adapters", json=path, headers=BOB),
        await multipart(replace="true", visibility="public"),
        *await reads(),
        await http.delete(f"/v1/adapters/{NAME}", headers=BOB),
        await multipart(replace="true"),
        await http.post("/v1/unload_lora_adapter", json={"lora_name": NAME}, headers=BOB),
        *await reads(),
    ]
    return [await _answer(r) for r in steps]


async def test_no_route_reveals_another_tenants_private_name(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, demo: DemoModelInfo
) -> None:
    scheduler.plan = lambda _: Plan(tokens=[5, 6, 7, 8], finish_reason="length")
    root = str(demo.adapters[0].path.parent)
    answers, submitted = [], []
    for alice_has_it in (True, False):
        async with (
            gateway_factory(adapters_root=root) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            if alice_has_it:
                r = await register_adapter(http, demo.adapters[0].path, NAME, ALICE)
                assert r.status_code == 201, r.text
                alices = r.json()
            first = len(scheduler.submits)
            answers.append(await _bobs_answers(http, demo))
            submitted.append([(s.tenant, s.adapter) for s in scheduler.submits[first:]])
            if alice_has_it:  # alice's adapter is untouched by all of it
                mine = (await http.get(f"/v1/adapters/{NAME}", headers=ALICE)).json()
                assert _stable(mine) == _stable(alices)
    with_alices, without = answers
    for i, (a, b) in enumerate(zip(with_alices, without, strict=True)):
        assert a == b, f"answer {i} differs: {a} != {b}"
    statuses = [status for status, _ in with_alices]
    assert statuses[:10] == [404, 200, 200, 404, 404, 404, 404, 404, 404, 404]
    assert statuses[10:17] == [201, 409, 200, 409, 200, 400, 200]
    assert statuses[17:25] == [200] * 8  # bob's own secret-a: seen, listed, served, tokenized
    # bob's requests went out with his own adapter's id, never alice's
    assert submitted[0] == submitted[1] and set(submitted[0]) == {("bob", f"bob/{NAME}")}
    assert len(submitted[0]) == 4  # completion + chat, while bob had his own (twice)
