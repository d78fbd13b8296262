"""Tenants change while the gateway runs: a rewritten tenants file adds a tenant, a second key
(rotation) and removes one, on the OpenAI routes and the adapter routes alike; a broken rewrite
changes nothing.  Real gateway, Redis and NATS."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import ALICE, BOB, TENANTS, GatewayFactory

CAROL = {"Authorization": "Bearer sk-carol-secret"}
ALICE_NEW = {"Authorization": "Bearer sk-alice-rotated"}


async def status_of(http: httpx.AsyncClient, headers: dict[str, str]) -> tuple[int, int]:
    """(GET /v1/models, GET /v1/adapters) statuses for a key."""
    models = await http.get("/v1/models", headers=headers)
    adapters = await http.get("/v1/adapters", headers=headers)
    return models.status_code, adapters.status_code


async def until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not take the new tenants file")


async def test_tenants_change_without_a_restart(
    gateway_factory: GatewayFactory, tenants_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLEX_TENANTS_RELOAD_S", "0.05")
    async with gateway_factory() as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert await status_of(http, CAROL) == (401, 401)
        rotated = {
            "tenants": [
                {"name": "alice", "api_keys": ["sk-alice-rotated", "sk-alice-secret"]},
                {"name": "carol", "api_key": "sk-carol-secret"},
            ]
        }
        tenants_file.write_text(json.dumps(rotated))

        async def carol_is_in() -> bool:
            return await status_of(http, CAROL) == (200, 200)

        await until(carol_is_in)
        assert await status_of(http, ALICE_NEW) == (200, 200)
        assert await status_of(http, ALICE) == (200, 200)  # the old key, until it is removed
        assert await status_of(http, BOB) == (401, 401)

        tenants_file.write_text('{"tenants": [{"name": "alice"')  # a half-written edit
        await asyncio.sleep(0.3)
        assert await status_of(http, CAROL) == (200, 200)  # the last good file still holds

        tenants_file.write_text(json.dumps(TENANTS))

        async def carol_is_out() -> bool:
            return await status_of(http, CAROL) == (401, 401)

        await until(carol_is_out)
        assert await status_of(http, BOB) == (200, 200)
