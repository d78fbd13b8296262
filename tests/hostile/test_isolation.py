"""No oracle for another tenant's private adapter names, and no tenant names on public /metrics.

ALPHA registers a private adapter.  For BETA, every adapter route answers exactly as it does for a
name nobody uses (the name itself aside), and BETA can create its own adapter of that name, which
changes nothing for ALPHA.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.hostile.cases import CaseContext
from tests.hostile.harness import ALPHA, BETA, HostileStack

# Fields that differ between two registrations of the same files.
VOLATILE = ("created", "version", "sha256", "config_sha256")

Route = Callable[[httpx.Client, CaseContext, str], httpx.Response]


def _multipart(c: httpx.Client, ctx: CaseContext, name: str) -> httpx.Response:
    return c.post("/v1/adapters", **ctx.template.multipart(name))


def _multipart_replace(c: httpx.Client, ctx: CaseContext, name: str) -> httpx.Response:
    return c.post("/v1/adapters", **ctx.template.multipart(name, replace="true"))


def _path(c: httpx.Client, ctx: CaseContext, name: str) -> httpx.Response:
    ctx.template.write(ctx.adapters_root / f"dir-{name}")
    return c.post("/v1/adapters", json={"name": name, "path": f"dir-{name}"})


def _load_lora(c: httpx.Client, ctx: CaseContext, name: str) -> httpx.Response:
    ctx.template.write(ctx.adapters_root / f"dir-{name}")
    return c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": f"dir-{name}"})


def _get(c: httpx.Client, ctx: CaseContext, name: str) -> httpx.Response:
    return c.get(f"/v1/adapters/{name}")


def _delete(c: httpx.Client, ctx: CaseContext, name: str) -> httpx.Response:
    return c.delete(f"/v1/adapters/{name}")


def _unload_lora(c: httpx.Client, ctx: CaseContext, name: str) -> httpx.Response:
    return c.post("/v1/unload_lora_adapter", json={"lora_name": name})


def _complete(c: httpx.Client, ctx: CaseContext, name: str) -> httpx.Response:
    return c.post("/v1/completions", json={"model": name, "prompt": "Hi", "max_tokens": 2})


def _model(c: httpx.Client, ctx: CaseContext, name: str) -> httpx.Response:
    return c.get(f"/v1/models/{name}")


CREATING: dict[str, Route] = {
    "POST /v1/adapters (multipart)": _multipart,
    "POST /v1/adapters (multipart, replace)": _multipart_replace,
    "POST /v1/adapters (path)": _path,
    "POST /v1/load_lora_adapter": _load_lora,
}
READING: dict[str, Route] = {
    "GET /v1/adapters/{name}": _get,
    "DELETE /v1/adapters/{name}": _delete,
    "POST /v1/unload_lora_adapter": _unload_lora,
    "POST /v1/completions": _complete,
    "GET /v1/models/{name}": _model,
}


def answer(r: httpx.Response, name: str) -> tuple[int, Any]:
    """The answer with the name replaced and per-registration fields dropped."""
    text = r.text.replace(name, "<name>")
    try:
        body = json.loads(text)
    except ValueError:
        return r.status_code, text
    if isinstance(body, dict):
        for key in VOLATILE:
            body.pop(key, None)
    return r.status_code, body


@pytest.fixture
def secret(hs: HostileStack, ctx: CaseContext) -> str:
    """A private adapter of ALPHA's, under a fresh name."""
    name = f"secret-{ctx.fresh_name()}"
    with hs.http(ALPHA) as alpha:
        r = _multipart(alpha, ctx, name)
    assert r.status_code == 201, r.text
    return name


def _owner_of(hs: HostileStack, tenant: str, name: str) -> str:
    with hs.http(tenant) as c:
        r = c.get(f"/v1/adapters/{name}")
    assert r.status_code == 200, r.text
    return r.json()["owner"]


@pytest.mark.parametrize("route", list(READING), ids=list(READING))
def test_reading_a_private_name_answers_as_for_an_unused_one(hs, ctx, secret, route):
    unused = f"unused-{ctx.fresh_name()}"
    with hs.http(BETA) as beta:
        assert answer(READING[route](beta, ctx, secret), secret) == answer(
            READING[route](beta, ctx, unused), unused
        )
    assert _owner_of(hs, ALPHA, secret) == ALPHA  # untouched


@pytest.mark.parametrize("route", list(CREATING), ids=list(CREATING))
def test_creating_a_name_another_tenant_uses_privately(hs, ctx, secret, route):
    unused = f"unused-{ctx.fresh_name()}"
    with hs.http(BETA) as beta:
        taken = CREATING[route](beta, ctx, secret)
        fresh = CREATING[route](beta, ctx, unused)
        assert taken.status_code in (200, 201), (
            f"BETA could not create its own {secret}: {taken.text}"
        )
        assert answer(taken, secret) == answer(fresh, unused)
        # BETA's own adapter of that name: listed, resolved and served for BETA only
        assert _owner_of(hs, BETA, secret) == BETA
        listed = [a["name"] for a in beta.get("/v1/adapters").json()["data"]]
        assert listed.count(secret) == 1
        served = _complete(beta, ctx, secret)
        assert served.status_code == 200, served.text
    assert _owner_of(hs, ALPHA, secret) == ALPHA
    hs.assert_healthy(ALPHA)


@pytest.mark.parametrize("caller", [None, BETA], ids=["anonymous", "another tenant"])
def test_public_metrics_name_no_other_tenant(hs: HostileStack, caller: str | None):
    for tenant in (ALPHA, BETA):
        hs.normal_request(tenant)  # both have token counts by now
    with hs.http(caller) as c:
        r = c.get("/metrics")
    leaked = [t for t in (ALPHA, BETA) if t != caller and t in r.text]
    assert not leaked, f"/metrics as {caller or 'anonymous'} ({r.status_code}) names {leaked}"


def test_admin_metrics_keep_per_tenant_series(hs: HostileStack):
    """The series moved to the operator's listener (``stack.urls["metrics"]``), not away."""
    hs.normal_request(BETA)
    text = httpx.get(hs.stack.urls["metrics"], timeout=10).text
    assert f'tenant="{BETA}"' in text, text[-1500:]


def test_public_adapters_name_no_other_tenant(hs: HostileStack):
    """The demo adapters are ALPHA's and public: BETA's model and adapter lists show them, and
    name neither ALPHA nor how many adapters ALPHA registered (``version``)."""
    with hs.http(BETA) as beta:
        models, adapters = beta.get("/v1/models"), beta.get("/v1/adapters")
    assert models.status_code == adapters.status_code == 200
    # BETA's own adapters (earlier tests register some) name BETA; every other one is public
    listed = [a for a in adapters.json()["data"] if a["owner"] != BETA]
    assert listed and all(a["owner"] == "public" and a["version"] is None for a in listed)
    cards = [m for m in models.json()["data"] if m.get("parent") and m["owned_by"] != BETA]
    assert cards and all(m["owned_by"] == "public" for m in cards)
    assert ALPHA not in models.text + adapters.text
    with hs.http(ALPHA) as alpha:  # its owner still sees it as its own
        own = alpha.get("/v1/adapters").json()["data"]
    assert any(a["owner"] == ALPHA and a["version"] for a in own)
