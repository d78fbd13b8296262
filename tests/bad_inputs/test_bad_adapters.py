"""Bad LoRA adapters fail ``add_lora`` with an ``AdapterError`` that says why: corrupt or
truncated safetensors, wrong shapes and ranks, unknown targets, bad configs, non-LoRA PEFT
types, NaN weights, bad names; a failed replacement keeps the registered adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraplex import SamplingParams
from loraplex.errors import AdapterError
from loraplex.tooling.demo import write_random_adapter
from tests.bad_inputs.helpers import A_KEY, B_KEY, MAX_RANK, SPEC, clone, edit_json, edit_tensors


def test_good_adapter_loads(llm, adapter_src):
    adapter = llm.add_lora("good-one", adapter_src)
    assert adapter.rank == 4
    assert set(adapter.targets) == {"q_proj", "v_proj"}
    llm.remove_lora("good-one")


def _adapter_error(llm, name: str, path: Path) -> str:
    with pytest.raises(AdapterError) as info:
        llm.add_lora(name, path)
    assert name not in llm.engine.adapters
    return str(info.value)


def test_corrupt_safetensors_bytes(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    (d / "adapter_model.safetensors").write_bytes(b"\x00\x01 this is not safetensors \xff" * 10)
    msg = _adapter_error(llm, "corrupt", d)
    assert "safetensors" in msg and "corrupt" in msg


def test_truncated_safetensors(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    w = d / "adapter_model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    msg = _adapter_error(llm, "truncated", d)
    assert "safetensors" in msg


def test_wrong_a_shape(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    edit_tensors(d / "adapter_model.safetensors", lambda t: t.update({A_KEY: torch.zeros(4, 65)}))
    msg = _adapter_error(llm, "bad-a", d)
    assert "q_proj" in msg and "layer 0" in msg
    assert "(4, 65)" in msg  # the offending shape
    assert "64" in msg  # and what the base model needs


def test_wrong_b_shape(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    edit_tensors(d / "adapter_model.safetensors", lambda t: t.update({B_KEY: torch.zeros(63, 4)}))
    msg = _adapter_error(llm, "bad-b", d)
    assert "q_proj" in msg and "(63, 4)" in msg


def test_a_and_b_ranks_disagree(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    edit_tensors(d / "adapter_model.safetensors", lambda t: t.update({B_KEY: torch.zeros(64, 5)}))
    msg = _adapter_error(llm, "bad-rank-pair", d)
    assert "q_proj" in msg and "(64, 5)" in msg


def test_a_without_b(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    edit_tensors(d / "adapter_model.safetensors", lambda t: t.pop(B_KEY))
    msg = _adapter_error(llm, "half", d)
    assert "q_proj" in msg and "pair" in msg


@pytest.mark.parametrize(
    ("key", "shape", "named"),
    [
        ("base_model.model.lm_head.lora_A.weight", (4, 64), "lm_head"),
        ("base_model.model.model.embed_tokens.lora_embedding_A", (4, 1024), "embed_tokens"),
        (
            "base_model.model.model.layers.0.self_attn.rotary_emb.lora_A.weight",
            (4, 64),
            "rotary_emb",
        ),
    ],
)
def test_unknown_target(llm, adapter_src, tmp_path, key, shape, named):
    d = clone(adapter_src, tmp_path / "a")
    edit_tensors(d / "adapter_model.safetensors", lambda t: t.update({key: torch.zeros(shape)}))
    msg = _adapter_error(llm, "unknown-target", d)
    assert named in msg


def test_layer_beyond_the_model(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")

    def add_layer_5(t):
        t[A_KEY.replace("layers.0", "layers.5")] = torch.zeros(4, 64)
        t[B_KEY.replace("layers.0", "layers.5")] = torch.zeros(64, 4)

    edit_tensors(d / "adapter_model.safetensors", add_layer_5)
    msg = _adapter_error(llm, "deep", d)
    assert "layer 5" in msg and "2 layers" in msg


def test_rank_above_max_lora_rank(llm, root):
    d = root / "rank16"
    write_random_adapter(d, SPEC, rank=16, alpha=16, targets=("q_proj",), seed=2)
    msg = _adapter_error(llm, "too-big", d)
    assert "16" in msg and "max_lora_rank" in msg and str(MAX_RANK) in msg


def test_config_rank_disagrees_with_tensors(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    edit_json(d / "adapter_config.json", r=2)
    msg = _adapter_error(llm, "r-mismatch", d)
    assert "rank 4" in msg and "r=2" in msg


def test_missing_adapter_config(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    (d / "adapter_config.json").unlink()
    msg = _adapter_error(llm, "no-config", d)
    assert "adapter_config.json" in msg and "missing" in msg


def test_missing_adapter_weights(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    (d / "adapter_model.safetensors").unlink()
    msg = _adapter_error(llm, "no-weights", d)
    assert "adapter_model.safetensors" in msg and "missing" in msg


def test_adapter_path_is_not_a_directory(llm, tmp_path):
    msg = _adapter_error(llm, "nowhere", tmp_path / "does-not-exist")
    assert "not a directory" in msg


def test_adapter_config_not_json(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    (d / "adapter_config.json").write_text("{not json")
    msg = _adapter_error(llm, "bad-json", d)
    assert "JSON" in msg


@pytest.mark.parametrize("peft_type", ["PREFIX_TUNING", "IA3", "LOHA"])
def test_non_lora_peft_type(llm, adapter_src, tmp_path, peft_type):
    d = clone(adapter_src, tmp_path / "a")
    edit_json(d / "adapter_config.json", peft_type=peft_type)
    msg = _adapter_error(llm, "not-lora", d)
    assert peft_type in msg and "LORA" in msg


def test_dora_is_rejected(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    edit_json(d / "adapter_config.json", use_dora=True)
    msg = _adapter_error(llm, "dora", d)
    assert "DoRA" in msg


def test_non_finite_weights(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")
    edit_tensors(
        d / "adapter_model.safetensors", lambda t: t[A_KEY].__setitem__((0, 0), float("nan"))
    )
    msg = _adapter_error(llm, "nan", d)
    assert "NaN" in msg


@pytest.mark.parametrize(
    "name", ["", "../escape", "has space", "-leading-dash", "x" * 65, "ümlaut"]
)
def test_bad_adapter_name(llm, adapter_src, name):
    with pytest.raises(AdapterError, match="invalid adapter name"):
        llm.add_lora(name, adapter_src)
    assert name not in llm.engine.adapters


def test_failed_replacement_keeps_the_registered_adapter(llm, adapter_src, tmp_path):
    llm.add_lora("keep-me", adapter_src)
    d = clone(adapter_src, tmp_path / "a")
    (d / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError):
        llm.add_lora("keep-me", d)
    assert "keep-me" in llm.engine.adapters
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=2), lora="keep-me")
    assert len(out[0].token_ids) == 2
    llm.remove_lora("keep-me")


def test_weights_beyond_the_bound(llm, adapter_src, tmp_path, monkeypatch):
    """All 1e30: finite, right shapes, and a crash at first use; refused, naming the tensor."""
    d = clone(adapter_src, tmp_path / "a")
    edit_tensors(d / "adapter_model.safetensors", lambda t: t.update({k: torch.full_like(v, 1e30) for k, v in t.items()}))  # fmt: skip
    msg = _adapter_error(llm, "huge", d)
    assert A_KEY in msg and "bound of 1000" in msg
    monkeypatch.setenv("LORAPLEX_ADAPTER_MAX_ABS_WEIGHT", "1e31")  # workers read the same bound
    assert llm.add_lora("huge", d).rank == 4
    llm.remove_lora("huge")


def test_rank_zero_tensors_without_r(llm, adapter_src, tmp_path):
    d = clone(adapter_src, tmp_path / "a")

    def rank_zero(t):
        for k in list(t):
            t[k] = torch.zeros(0, 64) if "lora_A" in k else torch.zeros(t[k].shape[0], 0)

    edit_tensors(d / "adapter_model.safetensors", rank_zero)
    cfg = json.loads((d / "adapter_config.json").read_text())
    del cfg["r"]
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    assert "rank 0" in _adapter_error(llm, "rank0", d)


@pytest.mark.parametrize(
    ("field", "value"),
    [("lora_alpha", "abc"), ("lora_alpha", None), ("rank_pattern", {"(": 4}), ("rank_pattern", {"q_proj": 0}), ("alpha_pattern", {"q_proj": None}), ("target_modules", ["q_proj", "v_proj", "nonexistent"])],
)  # fmt: skip
def test_bad_config_fields_name_the_field(llm, adapter_src, tmp_path, field, value):
    d = clone(adapter_src, tmp_path / "a")
    edit_json(d / "adapter_config.json", **{field: value})
    msg = _adapter_error(llm, "bad-field", d)
    assert field in msg and "adapter_config.json" in msg
