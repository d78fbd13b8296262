"""LoRAX's ``merged_adapters`` at the gateway: each name resolved for the tenant (its own
adapters and public ones, never another tenant's), the merge named by the id the workers build
it from, on ``/generate`` and on the OpenAI routes; LoRAX's refusals as 400s naming the field.
The fake scheduler records what reaches it (tests/gateway/conftest.py)."""

from __future__ import annotations

import httpx
import pytest
from openai import BadRequestError

from loraplex.lora.merge_spec import MergeSpec
from loraplex.tooling.demo import DemoModelInfo
from tests.gateway.conftest import ALICE, BOB, MODEL_ID, FakeScheduler, register_adapter
from tests.gateway.test_errors import assert_error

PROMPT = "Hello, world! How are you today?"


@pytest.fixture
async def adapters(gateway: str, demo: DemoModelInfo) -> None:
    """alice's private "mine" and bob's public "shared"."""
    lora0, lora1 = demo.adapters
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        assert (await register_adapter(http, lora0.path, "mine", ALICE)).status_code == 201
        r = await register_adapter(http, lora1.path, "shared", BOB, visibility="public")
        assert r.status_code == 201, r.text


async def generate(gateway: str, headers: dict[str, str], parameters: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=30) as http:
        return await http.post("/generate", json={"inputs": PROMPT, "parameters": parameters})


async def test_generate_merges_the_tenants_adapters(
    gateway: str, scheduler: FakeScheduler, adapters: None
) -> None:
    merged = {
        "ids": ["mine", "shared"],
        "weights": [0.7, 0.3],
        "merge_strategy": "ties",
        "density": 0.5,
        "majority_sign_method": "frequency",
    }
    r = await generate(gateway, ALICE, {"merged_adapters": merged, "max_new_tokens": 4})
    assert r.status_code == 200, r.text
    spec = MergeSpec(("alice/mine", "bob/shared"), (0.7, 0.3), "ties", 0.5, "frequency")
    assert scheduler.submits[-1].adapter == spec.adapter_id("alice")
    # LoRAX's defaults: weights 1.0 each, linear, density 1, total
    r = await generate(gateway, BOB, {"merged_adapters": {"ids": ["shared"]}})
    assert r.status_code == 200, r.text
    assert scheduler.submits[-1].adapter == MergeSpec(("bob/shared",), (1.0,)).adapter_id("bob")


async def test_the_openai_routes_take_merged_adapters_beside_the_base_model(
    gateway: str, scheduler: FakeScheduler, adapters: None, oai
) -> None:
    body = {"merged_adapters": {"ids": ["mine", "shared"], "merge_strategy": "dare_linear"}}
    await oai.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=3, extra_body=body)
    spec = MergeSpec(("alice/mine", "bob/shared"), (1.0, 1.0), "dare_linear")
    assert scheduler.submits[-1].adapter == spec.adapter_id("alice")
    await oai.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        extra_body=body,
    )  # fmt: skip
    assert scheduler.submits[-1].adapter == spec.adapter_id("alice")
    with pytest.raises(BadRequestError) as e:
        await oai.completions.create(model="mine", prompt=PROMPT, max_tokens=3, extra_body=body)
    assert e.value.body["param"] == "merged_adapters"  # type: ignore[index]


async def test_another_tenants_adapter_is_not_found_as_an_unknown_one(
    gateway: str, scheduler: FakeScheduler, adapters: None
) -> None:
    private = await generate(gateway, BOB, {"merged_adapters": {"ids": ["shared", "mine"]}})
    unknown = await generate(gateway, BOB, {"merged_adapters": {"ids": ["shared", "mine2"]}})
    assert_error(private, 404)
    assert_error(unknown, 404)
    assert private.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
        "mine2", "mine"
    )
    assert "alice" not in private.text
    assert scheduler.submits == []


@pytest.mark.parametrize(
    "parameters",
    [
        {"adapter_id": "mine", "merged_adapters": {"ids": ["shared"]}},
        {"merged_adapters": {"ids": []}},
        {"merged_adapters": {"ids": ["mine", "shared"], "weights": [1.0]}},
        {"merged_adapters": {"ids": ["mine", "mine"]}},
        {"merged_adapters": {"ids": ["mine"], "merge_strategy": "slerp"}},
        {"merged_adapters": {"ids": ["mine"], "density": 1.5}},
        {"merged_adapters": {"ids": ["mine"], "majority_sign_method": "most"}},
        {"merged_adapters": {"ids": ["mine"], "weights": [1e9]}},
        {"merged_adapters": {"ids": [MODEL_ID]}},
        {"merged_adapters": {"ids": ["mine"], "bogus": 1}},
        {"merged_adapters": {"ids": [f"a{i}" for i in range(17)]}},
    ],
)
async def test_lorax_refusals(
    gateway: str, scheduler: FakeScheduler, adapters: None, parameters: dict
) -> None:
    r = await generate(gateway, ALICE, parameters)
    assert_error(r, 400)
    assert r.json()["error"]["param"].startswith("parameters.merged_adapters"), r.text
    assert scheduler.submits == []
