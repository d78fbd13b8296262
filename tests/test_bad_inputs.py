"""Bad adapters, bad model directories and bad requests fail with typed errors that say why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraplex import LLM, SamplingParams
from loraplex.demo import (
    TinyModelSpec,
    write_demo_tokenizer,
    write_random_adapter,
    write_random_model,
)
from loraplex.errors import (
    AdapterError,
    AdapterNotFoundError,
    CapacityError,
    InvalidRequestError,
    ModelLoadError,
    UnsupportedModelError,
)

SPEC = TinyModelSpec(seed=7)  # hidden 64, 2 layers, 4 heads / 2 kv heads of 16, vocab 1024
MAX_RANK = 8
MAX_LEN = 32
OPTS = {
    "dtype": "float32",
    "device": "cpu",
    "block_size": 4,
    "max_model_len": MAX_LEN,
    "max_lora_rank": MAX_RANK,
}
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
K_PROJ = "model.layers.0.self_attn.k_proj.weight"
A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-inputs")


@pytest.fixture(scope="module")
def model_src(root) -> Path:
    d = root / "model"
    write_random_model(d, SPEC)
    write_demo_tokenizer(d, SPEC.vocab_size)
    return d


@pytest.fixture(scope="module")
def llm(model_src) -> LLM:
    return LLM(model_src, max_loras=2, **OPTS)


@pytest.fixture(scope="module")
def adapter_src(root) -> Path:
    d = root / "adapter"
    write_random_adapter(d, SPEC, rank=4, alpha=8, targets=("q_proj", "v_proj"), seed=1)
    return d


def clone(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is _DELETE:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


_DELETE = object()


def edit_tensors(path: Path, fn) -> None:
    tensors = load_file(str(path))
    fn(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


# ---- adapters ---------------------------------------------------------------------------------


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


# ---- model directories ------------------------------------------------------------------------


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


# ---- requests ---------------------------------------------------------------------------------


def test_prompt_at_context_length_is_rejected(llm):
    with pytest.raises(InvalidRequestError, match=str(MAX_LEN)):
        llm.generate([list(range(10, 10 + MAX_LEN))], SamplingParams(max_tokens=1))
    assert not llm.engine.has_unfinished()


def test_prompt_one_below_context_gets_one_token(llm):
    out = llm.generate(
        [list(range(10, 10 + MAX_LEN - 1))], SamplingParams(temperature=0.0, max_tokens=5)
    )
    assert len(out[0].token_ids) == 1
    assert out[0].finish_reason == "length"


@pytest.mark.parametrize("prompt", [[], ""])
def test_empty_prompt(llm, prompt):
    if prompt == "":
        # the tokenizer adds BOS, so an empty string is a one-token prompt and is accepted
        out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=1))
        assert len(out[0].token_ids) == 1
        return
    with pytest.raises(InvalidRequestError, match="at least one token"):
        llm.engine.add_request("empty", prompt, SamplingParams())
    with pytest.raises(InvalidRequestError):
        llm.generate([prompt], SamplingParams())
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize("bad", [[5, SPEC.vocab_size], [-1, 5], [10**9]])
def test_token_id_out_of_range(llm, bad):
    with pytest.raises(InvalidRequestError, match=str(SPEC.vocab_size)):
        llm.engine.add_request("oob", bad, SamplingParams())
    assert llm.engine.scheduler.find("oob") is None


def test_unknown_adapter(llm):
    with pytest.raises(AdapterNotFoundError, match="nope"):
        llm.engine.add_request("x", [5, 6], SamplingParams(), lora="nope")
    with pytest.raises(AdapterNotFoundError):
        llm.generate([[5, 6]], SamplingParams(), lora="nope")
    assert not llm.engine.has_unfinished()


def test_duplicate_request_id(llm):
    eng = llm.engine
    eng.add_request("dup", [5, 6], SamplingParams(max_tokens=1))
    try:
        with pytest.raises(InvalidRequestError, match="dup"):
            eng.add_request("dup", [7, 8], SamplingParams(max_tokens=1))
    finally:
        assert eng.abort("dup")
    assert not eng.has_unfinished()


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        # NaN passes a plain "< 0" check and then crashes the sampler for the whole batch
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"stop": [""]}, "stop"),
        ({"stop": ("ok", "")}, "stop"),
    ],
    ids=lambda v: ",".join(f"{k}={x!r}" for k, x in v.items()) if isinstance(v, dict) else v,
)
def test_invalid_sampling_params(kwargs, word):
    with pytest.raises(InvalidRequestError, match=word):
        SamplingParams(**kwargs)


def test_stop_given_as_a_single_string_is_one_stop_string():
    assert SamplingParams(stop="abc").stop == ("abc",)


def test_mismatched_per_prompt_lists(llm):
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        llm.generate([[5], [6], [7]], [SamplingParams(), SamplingParams()])
    assert not llm.engine.has_unfinished()


def test_unknown_dtype(model_src):
    with pytest.raises(InvalidRequestError, match="dtype"):
        LLM(model_src, **{**OPTS, "dtype": "float64"})


def test_kv_cache_too_small_for_one_sequence(model_src):
    small = LLM(model_src, **{**OPTS, "num_kv_blocks": 2})  # 32 tokens need 8 blocks of 4
    with pytest.raises(CapacityError):
        small.engine.add_request("big", [5, 6], SamplingParams())
    assert not small.engine.has_unfinished()


def _abort_everything(eng) -> None:
    """Keep the shared engine usable for later tests even when a test found a leak."""
    for seq in [*eng.scheduler.running, *eng.scheduler.waiting]:
        eng.abort(seq.request_id)


def test_failed_generate_leaves_no_requests_behind(llm):
    # the second prompt is invalid: the call fails, and the first must not linger in the engine
    try:
        with pytest.raises(InvalidRequestError):
            llm.generate(
                [[5, 6, 7], [SPEC.vocab_size + 5]], SamplingParams(temperature=0.0, max_tokens=3)
            )
        assert not llm.engine.has_unfinished()
        out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=3))
        assert len(out) == 1 and len(out[0].token_ids) == 3
    finally:
        _abort_everything(llm.engine)


def test_removing_an_adapter_with_queued_requests_does_not_break_the_engine(llm, adapter_src):
    eng = llm.engine
    llm.add_lora("queued", adapter_src)
    eng.add_request(
        "uses-queued", [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=2), lora="queued"
    )
    try:
        llm.remove_lora("queued")
    except AdapterError:
        removed = False  # refusing is fine: the request still needs it
    else:
        removed = True
    finished = {}
    try:
        for _ in range(20):
            if not eng.has_unfinished():
                break
            for out in eng.step():
                if out.finished:
                    finished[out.request_id] = out.finish_reason
        assert not eng.has_unfinished()
    finally:
        _abort_everything(eng)
    if removed:
        assert finished.get("uses-queued") == "abort" or "uses-queued" not in finished
    else:
        assert finished["uses-queued"] == "length"
        llm.remove_lora("queued")
