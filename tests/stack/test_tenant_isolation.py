"""Two tenants' adapters of one name on a real stack (`loraplex up` with a tenants file): each
tenant's ``secret-a`` serves its own weights, exactly as the offline engine does with those
weights (same prompt, so a shared engine key or prefix-cache block would show), public adapters
resolve for everyone, and the API port has no ``/metrics``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from loraplex import LLM, SamplingParams
from tests.stack.conftest import launch

KEYS = {"alice": "sk-alice-e2e", "bob": "sk-bob-e2e", "carol": "sk-carol-e2e"}
PROMPT = [(i * 37 + 11) % 500 for i in range(40)]  # two full 16-token blocks: prefix-cached
GREEDY = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tenants = tmp_path_factory.mktemp("tenants") / "tenants.json"
    tenants.write_text(
        json.dumps({"tenants": [{"name": n, "api_key": k} for n, k in KEYS.items()]})
    )
    flags = ["--tenants", str(tenants), "--prefill-workers", "0", "--decode-workers", "1"]
    stack = launch(tmp_path_factory, "isolation", flags)
    yield stack
    stack.stop()


def _upload(base: str, tenant: str, name: str, path: Path) -> httpx.Response:
    files = [
        ("files", (f, (path / f).read_bytes(), "application/octet-stream"))
        for f in ("adapter_config.json", "adapter_model.safetensors")
    ]
    return httpx.post(
        base + "/v1/adapters", data={"name": name}, files=files, headers=_auth(tenant), timeout=60
    )


def _text(base: str, tenant: str, model: str) -> str:
    body = {"model": model, "prompt": PROMPT, **GREEDY}
    r = httpx.post(base + "/v1/completions", json=body, headers=_auth(tenant), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_same_name_serves_each_owners_weights(stack) -> None:
    base = stack.urls["gateway"]
    public, bobs, carols = stack.adapters[:3]  # the demo adapters are alice's, and public
    made = [_upload(base, t, "secret-a", a.path) for t, a in (("bob", bobs), ("carol", carols))]
    assert [r.status_code for r in made] == [201, 201]
    # same name, same version: only the owner tells the two apart (engine keys, cached blocks)
    assert made[0].json()["version"] == made[1].json()["version"]

    llm = LLM(Path(stack.urls["model_dir"]), dtype="float32", device="cpu", max_loras=4)
    for a in (public, bobs, carols):
        llm.add_lora(a.name, a.path)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    want = {a.name: llm.generate(PROMPT, params, lora=a.name)[0].text for a in stack.adapters[:3]}
    assert want[bobs.name] != want[carols.name]  # the check can tell the two apart

    # interleaved, twice: the second round meets cached prompt blocks and resident adapters
    for _ in range(2):
        assert _text(base, "bob", "secret-a") == want[bobs.name]
        assert _text(base, "carol", "secret-a") == want[carols.name]
    # a public adapter resolves for everyone
    for tenant in KEYS:
        assert _text(base, tenant, public.name) == want[public.name]
    r = httpx.post(
        base + "/v1/completions",
        json={"model": "secret-a", "prompt": PROMPT, **GREEDY},
        headers=_auth("alice"),
        timeout=30,
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_metrics_only_on_the_metrics_listener(stack) -> None:
    base = stack.urls["gateway"]
    r = httpx.get(base + "/metrics", headers=_auth("alice"), timeout=10)
    assert r.status_code == 404 and "alice" not in r.text
    text = httpx.get(stack.urls["metrics"], timeout=10).text
    assert "loraplex_gateway_requests_total" in text


def _cached_tokens(base: str, tenant: str, prompt: list[int], **extra: object) -> int:
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0, **extra}
    r = httpx.post(base + "/v1/completions", json=body, headers=_auth(tenant), timeout=60)
    assert r.status_code == 200, r.text
    details = r.json()["usage"].get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def test_no_tenant_sees_another_tenants_cached_prompt(stack) -> None:
    """On the base model, one tenant's prompt leaves blocks in the worker's prefix cache. The
    same prompt from another tenant must not find them: its usage (and its time to first token)
    would tell it what the first tenant sent. The first tenant finds its own; a client salt
    splits its cache further."""
    base = stack.urls["gateway"]
    model = httpx.get(base + "/v1/models", headers=_auth("alice"), timeout=10).json()["data"][0]
    prompt = [(i * 53 + 7) % 500 for i in range(70)]  # 4 full blocks before the last token
    kwargs = {"model": model["id"]}
    assert _cached_tokens(base, "alice", prompt, **kwargs) == 0
    assert _cached_tokens(base, "bob", prompt, **kwargs) == 0
    assert _cached_tokens(base, "alice", prompt, **kwargs) == 64
    assert _cached_tokens(base, "alice", prompt, cache_salt="conv-2", **kwargs) == 0
    assert _cached_tokens(base, "alice", prompt, cache_salt="conv-2", **kwargs) == 64
