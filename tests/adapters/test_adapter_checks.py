"""Hostile and malformed adapters, uploaded to the adapter-store on a real uvicorn server over a
real redis-server: every one is a 400 that names the tensor or the config field at fault (none a
500), nothing is stored, and the valid variants PEFT writes are still accepted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load, save

from loraplex.adapters.store import AdapterStore

from .conftest import ALICE, keys_with
from .test_service import CFG, WTS, assert_error

A0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
HANGS = r"(.|.)*[^a-z_0-9]"  # exponential backtracking on any module name in Python's re


def variant(
    good: Path, tensors: Callable[[dict[str, torch.Tensor]], Any] | None = None, **config: Any
) -> tuple[bytes, bytes]:
    """(config, weights) of the adapter at ``good`` with config fields replaced (or deleted,
    given ``...``) and its tensors edited in place by ``tensors``."""
    cfg = json.loads((good / CFG).read_text())
    for key, value in config.items():
        if value is ...:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    weights = load((good / WTS).read_bytes())
    if tensors is not None:
        tensors(weights)
    return json.dumps(cfg).encode(), save({k: v.contiguous() for k, v in weights.items()})


def fill(value: float, which: str = "") -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        for key in t:
            if which in key:
                t[key] = torch.full_like(t[key], value)

    return edit


def rank_zero(t: dict[str, torch.Tensor]) -> None:
    for key in list(t):
        t[key] = torch.zeros(0, t[key].shape[1]) if "lora_A" in key else torch.zeros(t[key].shape[0], 0)  # fmt: skip


def one_nan(t: dict[str, torch.Tensor]) -> None:
    t[A0][0, 0] = float("nan")


async def post(http: httpx.AsyncClient, name: str, files: tuple[bytes, bytes]) -> httpx.Response:
    parts = [("files", (CFG, files[0], "application/json")), ("files", (WTS, files[1], "x/y"))]
    return await http.post("/v1/adapters", data={"name": name}, files=parts, headers=ALICE)


# (id, variant arguments, words the 400's message must contain)
REFUSED: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("all-1e30", {"tensors": fill(1e30)}, (A0, "|w| = 1e+30", "bound of 1000", "LORAPLEX_ADAPTER_MAX_ABS_WEIGHT")),
    ("scaled-b", {"tensors": fill(100.0, "lora_B"), "lora_alpha": 1e6}, (B0, "times its scaling 2.5e+05")),
    ("nan", {"tensors": one_nan}, (A0, "NaN or infinite")),
    ("rank-0-no-r", {"tensors": rank_zero, "r": ...}, ("layer 0 q_proj has rank 0",)),
    ("rank-0", {"tensors": rank_zero}, ("rank 0",)),
    ("r-bool", {"r": True}, ("field 'r' must be a positive integer, got True",)),
    ("r-str", {"r": "4"}, ("field 'r' must be a positive integer",)),
    ("r-null", {"r": None}, ("field 'r' must be a positive integer",)),
    ("rank-pattern-0", {"rank_pattern": {"q_proj": 0}}, ("field \"rank_pattern['q_proj']\" must be a positive integer, got 0",)),
    ("rank-pattern-str", {"rank_pattern": {"q_proj": "4"}}, ("rank_pattern['q_proj']", "positive integer")),
    ("rank-pattern-abc", {"rank_pattern": {"q_proj": "abc"}}, ("rank_pattern['q_proj']", "'abc'")),
    ("rank-pattern-key", {"rank_pattern": {"(": 4}}, ("field 'rank_pattern' pattern '('", "not a valid regular expression")),
    ("rank-pattern-list", {"rank_pattern": [1]}, ("field 'rank_pattern' must be an object",)),
    ("rank-pattern-long", {"rank_pattern": {"q" * 300: 4}}, ("longer than 256 characters",)),
    ("rank-pattern-many", {"rank_pattern": {f"m{i}": 4 for i in range(5000)}}, ("more than 4096 entries",)),
    ("rank-pattern-redos", {"rank_pattern": {HANGS: 4}}, ("take more than 1 s to match",)),
    ("alpha-abc", {"lora_alpha": "abc"}, ("field 'lora_alpha' must be a finite number, got 'abc'",)),
    ("alpha-null", {"lora_alpha": None}, ("field 'lora_alpha' must be a finite number, got None",)),
    ("alpha-bool", {"lora_alpha": True}, ("field 'lora_alpha' must be a finite number",)),
    ("alpha-nan", {"lora_alpha": float("nan")}, ("field 'lora_alpha' must be a finite number, got nan",)),
    ("alpha-pattern-null", {"alpha_pattern": {"q_proj": None}}, ("alpha_pattern['q_proj']", "finite number")),
    ("alpha-pattern-key", {"alpha_pattern": {"[": 2}}, ("field 'alpha_pattern' pattern '['", "not a valid regular expression")),
    ("rslora-str", {"use_rslora": "false"}, ("field 'use_rslora' must be true or false",)),
    ("targets-unknown", {"target_modules": ["q_proj", "v_proj", "nonexistent"]}, ("'target_modules' names 'nonexistent', which is not a module of the base model",)),
    ("targets-lm-head", {"target_modules": ["q_proj", "v_proj", "lm_head"]}, ("'lm_head', which LoRA cannot adapt",)),
    ("targets-embed", {"target_modules": ["q_proj", "v_proj", "embed_tokens"]}, ("'embed_tokens', which LoRA cannot adapt",)),
    ("targets-miss-tensor", {"target_modules": ["q_proj"]}, ("adapts model.layers.0.self_attn.v_proj", "'target_modules' does not include")),
    ("targets-regex-all", {"target_modules": ".*"}, ("'target_modules' matches 'model'", "cannot adapt")),
    ("targets-regex-none", {"target_modules": "nothing"}, ("'target_modules' matches no module of the base model",)),
    ("targets-regex-bad", {"target_modules": "("}, ("field 'target_modules' pattern '('", "not a valid regular expression")),
    ("targets-regex-redos", {"target_modules": HANGS}, ("take more than 1 s to match",)),
    ("targets-int", {"target_modules": 5}, ("'target_modules' must be a non-empty list",)),
    ("targets-empty", {"target_modules": []}, ("'target_modules' must be a non-empty list",)),
    ("targets-entry", {"target_modules": ["q_proj", 1]}, ("'target_modules' entry 1 is not a module name",)),
    ("layers", {"layers_to_transform": [1]}, ("in layer 0, which adapter_config.json field 'layers_to_transform' does not include",)),
    ("layers-type", {"layers_to_transform": "x"}, ("'layers_to_transform' must be a layer index",)),
    ("modules-to-save", {"modules_to_save": ["lm_head"]}, ("'modules_to_save' ['lm_head'] is not supported",)),
    ("fan-in-fan-out", {"fan_in_fan_out": True}, ("'fan_in_fan_out' True", "not supported")),
    ("bias", {"bias": "all"}, ("bias='all' is not supported",)),
    ("dora-str", {"use_dora": "no"}, ("field 'use_dora' must be true or false",)),
]  # fmt: skip


@pytest.mark.parametrize(("args", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
async def test_refused_with_a_400_naming_the_fault(
    service, make_adapter, store: AdapterStore, args: dict[str, Any], words: tuple[str, ...]
) -> None:
    good = make_adapter("good", rank=4, targets=("q_proj", "v_proj"))
    async with service() as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        resp = await post(http, "bad", variant(good, **args))
        assert_error(resp, 400, words[0])
        assert resp.json()["error"]["code"] == "invalid_adapter"
        for word in words[1:]:
            assert word in resp.json()["error"]["message"]
        assert (await post(http, "good", variant(good))).status_code == 201  # still serving
        listed = (await http.get("/v1/adapters", headers=ALICE)).json()["data"]
        assert [a["name"] for a in listed] == ["good"]
    # Nothing staged either (by id: the random key prefix itself may hold "bad").
    assert not [k for k in await keys_with(store) if "/bad" in k]


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("peft-as-written", {}),
    ("targets-regex", {"target_modules": r".*\.(q_proj|v_proj)"}),
    ("targets-all-linear", {"target_modules": "all-linear"}),
    ("targets-full-names", {"target_modules": ["model.layers.0.self_attn.q_proj", "self_attn.q_proj", "v_proj"]}),
    ("rank-pattern", {"r": 8, "rank_pattern": {"q_proj": 4, r"model\.layers\.\d+\.self_attn\.v_proj": 4}}),
    ("alpha-pattern", {"alpha_pattern": {"v_proj": 16}, "lora_alpha": 4}),
    ("no-r-no-alpha", {"r": ..., "lora_alpha": ..., "target_modules": ...}),
    ("layers", {"layers_to_transform": [0, 1, 2, 3]}),
    ("nulls", {"rank_pattern": None, "alpha_pattern": None, "use_rslora": None, "modules_to_save": None}),
    ("a-near-the-bound", {"tensors": fill(999.0, "lora_A")}),
]  # fmt: skip


@pytest.mark.parametrize("args", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
async def test_valid_variants_are_accepted(service, make_adapter, args: dict[str, Any]) -> None:
    good = make_adapter("good", rank=4, targets=("q_proj", "v_proj"))
    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        resp = await post(http, "ok", variant(good, **args))
        assert resp.status_code == 201, resp.text
        assert resp.json()["rank"] == 4 and resp.json()["targets"] == ["q_proj", "v_proj"]


async def test_the_weight_bound_is_configurable(service, make_adapter) -> None:
    poisoned = variant(make_adapter("p"), tensors=fill(1e30))
    async with service(max_adapter_weight=1e31) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await post(http, "huge", poisoned)).status_code == 201
    async with service(max_adapter_weight=0.01) as url, httpx.AsyncClient(base_url=url) as http:
        assert_error(await post(http, "tiny", variant(make_adapter("t"))), 400, "bound of 0.01")
