"""Tests for the deterministic tiny-model / tokenizer / adapter generator."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraplex.tooling.demo import (
    MANIFEST_NAME,
    TinyModelSpec,
    lora_scaling,
    random_model_tensors,
    write_demo_model,
    write_random_model,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
transformers.logging.set_verbosity_error()

PROMPTS = [
    "Hello, world!",
    "The server loads the weights",
    "Once upon a time there was a robot",
    "My name is Ada and I like",
    "def add(a, b):",
    "The scheduler groups requests into",
    "A cat paints the blue door",
    "Step 42 is done. The teacher",
]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
_SRC_ROOT = Path(__file__).resolve().parents[1] / "shared"


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return write_demo_model(tmp_path_factory.mktemp("demo"), num_adapters=5, seed=0)


@pytest.fixture(scope="module")
def tokenizer(demo):
    return transformers.AutoTokenizer.from_pretrained(demo.model_dir)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> torch.Tensor:
    # Equal-length prompts avoid padding/attention-mask differences.
    ids = [tokenizer(p)["input_ids"][:6] for p in PROMPTS]
    assert all(len(x) == 6 for x in ids)
    return torch.tensor(ids)


def _load_base(model_dir: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.no_grad()
def _last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits[:, -1].float()


def test_byte_identical_across_processes(demo, tmp_path: Path) -> None:
    # A fresh interpreter catches hash-seed / thread-order nondeterminism; it also checks
    # that runtime code never pulls in transformers or peft.
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]);"
        "from loraplex.tooling.demo import write_demo_model;"
        "write_demo_model(sys.argv[1], num_adapters=5, seed=0);"
        "bad = [m for m in ('transformers', 'peft') if m in sys.modules];"
        "assert not bad, bad"
    )
    out = tmp_path / "again"
    subprocess.run([sys.executable, "-c", code, str(out), str(_SRC_ROOT)], check=True)
    first, second = _tree_hashes(demo.model_dir), _tree_hashes(out)
    assert first == second
    assert "tokenizer.json" in first and "adapters/demo-lora-4/adapter_model.safetensors" in first


def test_sharded_model_deterministic(tmp_path: Path) -> None:
    spec = TinyModelSpec(arch="qwen2", num_shards=3, seed=7)
    write_random_model(tmp_path / "a", spec)
    write_random_model(tmp_path / "b", spec)
    assert _tree_hashes(tmp_path / "a") == _tree_hashes(tmp_path / "b")
    other = _tree_hashes(tmp_path / "a")
    write_random_model(tmp_path / "c", TinyModelSpec(arch="qwen2", num_shards=3, seed=8))
    assert (
        _tree_hashes(tmp_path / "c")["model-00001-of-00003.safetensors"]
        != other["model-00001-of-00003.safetensors"]
    )


@pytest.mark.parametrize(
    "spec",
    [
        TinyModelSpec(arch="llama", rope_scaling=LLAMA3_ROPE),
        TinyModelSpec(arch="llama", tie_word_embeddings=True, num_shards=2, head_dim=32),
        TinyModelSpec(arch="mistral", sliding_window=8, num_shards=3),
        TinyModelSpec(arch="qwen2", tie_word_embeddings=True),
        TinyModelSpec(arch="qwen2", num_shards=2, num_kv_heads=1, rope_theta=1e6),
    ],
    ids=[
        "llama-llama3rope",
        "llama-tied-2shards",
        "mistral-swa-3shards",
        "qwen2-tied",
        "qwen2-2shards",
    ],
)
def test_transformers_loads_each_arch(spec: TinyModelSpec, tmp_path: Path) -> None:
    write_random_model(tmp_path, spec)
    if spec.num_shards > 1:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == spec.num_shards
        sizes = sum(p.stat().st_size for p in tmp_path.glob("model-*.safetensors"))
        assert index["metadata"]["total_size"] <= sizes
    model = _load_base(tmp_path)
    assert (
        type(model).__name__
        == json.loads((tmp_path / "config.json").read_text())["architectures"][0]
    )
    # Every HF parameter must come from the file: HF silently random-inits missing ones.
    want = random_model_tensors(spec)
    got = model.state_dict()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    if spec.tie_word_embeddings:
        assert "lm_head.weight" not in want
        torch.testing.assert_close(got["lm_head.weight"], want["model.embed_tokens.weight"])
    ids = torch.randint(0, spec.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
    logits = _last_logits(model, ids)
    assert torch.isfinite(logits).all()
    assert logits.std() > 1.0  # not degenerate
    assert len(set(logits.argmax(-1).tolist())) > 1  # depends on the input


def test_base_logits_have_clear_margin(demo, prompt_ids: torch.Tensor) -> None:
    top2 = _last_logits(_load_base(demo.model_dir), prompt_ids).topk(2).values
    margins = top2[:, 0] - top2[:, 1]
    assert margins.median() > 0.2, margins


def test_tokenizer_matches_tokenizers_library(demo, tokenizer) -> None:
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(demo.model_dir / "tokenizer.json"))
    assert raw.get_vocab_size() == demo.spec.vocab_size == len(tokenizer)
    assert tokenizer.bos_token_id == demo.spec.bos_token_id == 0
    assert tokenizer.eos_token_id == demo.spec.eos_token_id == 1
    texts = [
        *PROMPTS,
        " leading space",
        "ünïcödé 日本語 🤖",
        "<|im_start|>user\nhi<|im_end|>\n",
        "",
    ]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids == raw.encode(text).ids
        assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace(
            "<|im_start|>", ""
        ).replace("<|im_end|>", "")
    assert raw.encode("<|im_end|>", add_special_tokens=False).ids == [3]


def test_chat_template(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert plain.endswith("Hi there<|im_end|>\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1


def test_manifest(demo) -> None:
    manifest = json.loads((demo.model_dir / MANIFEST_NAME).read_text())
    assert [a["name"] for a in manifest["adapters"]] == list(demo.adapter_names)
    assert demo.adapter_names == tuple(f"demo-lora-{i}" for i in range(5))
    for entry, info in zip(manifest["adapters"], demo.adapters, strict=True):
        assert demo.model_dir / entry["path"] == info.path
        cfg = json.loads((info.path / "adapter_config.json").read_text())
        assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == (
            info.rank,
            info.alpha,
            info.use_rslora,
        )
    assert sorted({a.rank for a in demo.adapters}) == [4, 8, 16, 32]
    assert any(a.use_rslora for a in demo.adapters)


def test_peft_loads_adapters_side_by_side(demo, prompt_ids: torch.Tensor) -> None:
    base_logits = _last_logits(_load_base(demo.model_dir), prompt_ids)
    first, *rest = demo.adapters
    model = peft.PeftModel.from_pretrained(
        _load_base(demo.model_dir), first.path, adapter_name=first.name
    ).eval()
    for info in rest:
        model.load_adapter(info.path, adapter_name=info.name)
    for info in demo.adapters:
        model.set_adapter(info.name)
        # All saved LoRA tensors must have landed in the model (PEFT only warns otherwise).
        saved = load_file(info.path / "adapter_model.safetensors")
        loaded = peft.get_peft_model_state_dict(
            model, adapter_name=info.name, save_embedding_layers=False
        )
        assert set(saved) == set(loaded)
        for key, tensor in saved.items():
            torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)
        logits = _last_logits(model, prompt_ids)
        assert torch.isfinite(logits).all()
        changed = (logits.argmax(-1) != base_logits.argmax(-1)).sum().item()
        assert changed >= 2, f"{info.name} changed only {changed}/{len(PROMPTS)} greedy tokens"


@pytest.mark.parametrize("index", [0, 3])
def test_adapter_scaling_matches_merged_weights(demo, prompt_ids: torch.Tensor, index: int) -> None:
    # Pins the W + scale * B @ A semantics (incl. rsLoRA) that engine kernels must reproduce.
    info = demo.adapters[index]
    peft_model = peft.PeftModel.from_pretrained(_load_base(demo.model_dir), info.path).eval()
    merged = _load_base(demo.model_dir)
    saved = load_file(info.path / "adapter_model.safetensors")
    scale = lora_scaling(info.rank, info.alpha, info.use_rslora)
    params = dict(merged.named_parameters())
    for key, a in saved.items():
        if key.endswith("lora_A.weight"):
            b = saved[key.replace("lora_A", "lora_B")]
            name = key.removeprefix("base_model.model.").replace(".lora_A", "")
            with torch.no_grad():
                params[name] += scale * (b @ a)
    torch.testing.assert_close(
        _last_logits(peft_model, prompt_ids),
        _last_logits(merged, prompt_ids),
        rtol=1e-4,
        atol=1e-4,
    )


def test_chat_template_with_tools_renders_as_transformers_does(demo, tokenizer) -> None:
    """The demo template's Hermes tools block, past calls and tool results: loraplex's renderer
    (a sandbox with transformers' ``tojson``) gives transformers' text, character for character,
    with characters jinja's own ``tojson`` would escape (<, >, &, ', non-ASCII)."""
    from loraplex.text.tokenizer import Tokenizer

    tools = [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & 'here', Zürich",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time"}},
    ]  # fmt: skip
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny <21 C>"},
    ]  # fmt: skip
    ours = Tokenizer(demo.model_dir)
    for gen_prompt in (True, False):
        want = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=gen_prompt
        )
        assert ours.apply_chat_template(messages, gen_prompt, tools) == want
        assert "<tools>" in want and "<tool_response>" in want and "Zürich" in want
    # without tools the same template is plain ChatML
    plain = [messages[0], messages[1]]
    assert ours.apply_chat_template(plain, True, None) == tokenizer.apply_chat_template(
        plain, tokenize=False, add_generation_prompt=True
    )
