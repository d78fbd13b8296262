"""Bad model directories fail ``LLM(...)`` with a ``ModelLoadError`` (or
``UnsupportedModelError``) that says why: unsupported architectures, missing or broken
config, tokenizer, weights, shards and tensors, and wrongly shaped tensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraplex import LLM
from loraplex.errors import ModelLoadError, UnsupportedModelError
from loraplex.tooling.demo import TinyModelSpec, write_demo_tokenizer, write_random_model
from tests.bad_inputs.helpers import (
    _DELETE,
    K_PROJ,
    OPTS,
    Q_PROJ,
    SPEC,
    clone,
    edit_json,
    edit_tensors,
)


def _model_error(path: Path, kind: type[Exception] = ModelLoadError) -> str:
    with pytest.raises(kind) as info:
        LLM(path, **OPTS)
    return str(info.value)


def test_unsupported_architecture(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    edit_json(d / "config.json", architectures=["GPT2LMHeadModel"], model_type="gpt2")
    msg = _model_error(d, UnsupportedModelError)
    assert "GPT2LMHeadModel" in msg and "LlamaForCausalLM" in msg


def test_unsupported_rope_scaling(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    edit_json(d / "config.json", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    msg = _model_error(d, UnsupportedModelError)
    assert "yarn" in msg


def test_unsupported_activation(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    edit_json(d / "config.json", hidden_act="gelu")
    msg = _model_error(d, UnsupportedModelError)
    assert "gelu" in msg


def test_missing_config_json(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    (d / "config.json").unlink()
    msg = _model_error(d)
    assert "config.json" in msg


def test_config_json_not_json(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    (d / "config.json").write_text("{")
    msg = _model_error(d)
    assert "JSON" in msg


def test_config_missing_required_key(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    edit_json(d / "config.json", hidden_size=_DELETE)
    msg = _model_error(d)
    assert "hidden_size" in msg


def test_missing_tokenizer(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    (d / "tokenizer.json").unlink()
    msg = _model_error(d)
    assert "tokenizer.json" in msg


def test_missing_weights(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    (d / "model.safetensors").unlink()
    msg = _model_error(d)
    assert "safetensors" in msg and "no" in msg


def test_only_bin_weights_gets_a_hint(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    msg = _model_error(d)
    assert ".bin" in msg


def test_corrupt_weights_file(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    msg = _model_error(d)
    assert "model.safetensors" in msg


def test_missing_shard(root, tmp_path):
    d = root / "sharded"
    if not d.exists():
        write_random_model(d, TinyModelSpec(seed=7, num_shards=3))
        write_demo_tokenizer(d, SPEC.vocab_size)
    LLM(d, **OPTS)  # the intact sharded checkpoint loads
    broken = clone(d, tmp_path / "m")
    shard = "model-00002-of-00003.safetensors"
    (broken / shard).unlink()
    msg = _model_error(broken)
    assert shard in msg and "missing" in msg


def test_missing_tensor(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    edit_tensors(d / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    msg = _model_error(d)
    assert "layers.1" in msg and "down" in msg


def test_missing_lm_head_when_untied(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    edit_tensors(d / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    msg = _model_error(d)
    assert "lm_head" in msg


def test_wrong_in_features(model_src, tmp_path):
    d = clone(model_src, tmp_path / "m")
    edit_tensors(d / "model.safetensors", lambda t: t.update({K_PROJ: t[K_PROJ][:, :-1]}))
    msg = _model_error(d)
    assert K_PROJ in msg and "shape" in msg and "(32, 63)" in msg


def _more_rows(t, name):
    t[name] = torch.cat([t[name], t[name]])


def _fewer_rows(t, name):
    t[name] = t[name][:-1]


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("model.layers.0.self_attn.v_proj.weight", _more_rows),
        (K_PROJ, _more_rows),  # k sits inside the fused qkv parameter
        (Q_PROJ, _fewer_rows),
        ("model.layers.1.mlp.gate_proj.weight", _fewer_rows),
        ("model.embed_tokens.weight", _fewer_rows),
    ],
    ids=["v_proj-double", "k_proj-double", "q_proj-short", "gate_proj-short", "embed-short"],
)
def test_wrong_row_count_is_reported_as_a_shape_error(model_src, tmp_path, name, change):
    d = clone(model_src, tmp_path / "m")
    edit_tensors(d / "model.safetensors", lambda t: change(t, name))
    msg = _model_error(d)
    assert name in msg and "shape" in msg, msg


def test_compensating_wrong_shapes_are_not_loaded_silently(model_src, tmp_path):
    # q_proj one row too many and k_proj one row too few: the fused qkv row total still adds up
    d = clone(model_src, tmp_path / "m")

    def skew(t):
        t[Q_PROJ] = torch.cat([t[Q_PROJ], t[Q_PROJ][:1]])
        t[K_PROJ] = t[K_PROJ][:-1]

    edit_tensors(d / "model.safetensors", skew)
    with pytest.raises(ModelLoadError) as info:
        LLM(d, **OPTS)
    assert "shape" in str(info.value)
