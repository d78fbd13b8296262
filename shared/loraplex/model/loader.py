"""Load Hugging Face safetensors checkpoints (single file or sharded with an index)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from loraplex.errors import ModelLoadError
from loraplex.model.config import ModelConfig
from loraplex.model.llama import LlamaForCausalLM

INDEX_FILE = "model.safetensors.index.json"


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from the index when there is one."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index}: malformed index ({e})") from e
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(
                f"{model_dir}: shards listed in {INDEX_FILE} are missing: {missing}"
            )
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(model_dir.glob("*.safetensors"))
    if others:
        return others
    hint = (
        " (.bin checkpoints are not loaded: convert to safetensors)"
        if any(model_dir.glob("*.bin"))
        else ""
    )
    raise ModelLoadError(f"{model_dir}: no *.safetensors weights found{hint}")


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    yield name, fh.get_tensor(name)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"{f}: cannot read safetensors ({e})") from e


Target = tuple[str, int, int | None]  # (parameter, row offset, rows; None = the whole parameter)


def _target_of(name: str, cfg: ModelConfig) -> Target | None:
    """Map an HF tensor name to where its rows go in our (possibly fused) parameters."""
    if name == "model.embed_tokens.weight":
        return "embed_tokens", 0, None
    if name == "lm_head.weight":
        return ("lm_head", 0, None) if not cfg.tie_word_embeddings else None
    if name == "model.norm.weight":
        return "norm.weight", 0, None
    if not name.startswith("model.layers."):
        return None
    parts = name.split(".")
    i, rest = parts[2], ".".join(parts[3:])
    p = f"layers.{i}."
    q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    table: dict[str, Target] = {
        "input_layernorm.weight": ("input_norm.weight", 0, None),
        "post_attention_layernorm.weight": ("post_norm.weight", 0, None),
        "self_attn.q_proj.weight": ("qkv_weight", 0, q),
        "self_attn.k_proj.weight": ("qkv_weight", q, kv),
        "self_attn.v_proj.weight": ("qkv_weight", q + kv, kv),
        "self_attn.q_proj.bias": ("qkv_bias", 0, q),
        "self_attn.k_proj.bias": ("qkv_bias", q, kv),
        "self_attn.v_proj.bias": ("qkv_bias", q + kv, kv),
        "self_attn.o_proj.weight": ("o_weight", 0, None),
        "self_attn.o_proj.bias": ("o_bias", 0, None),
        "mlp.gate_proj.weight": ("gate_up_weight", 0, inter),
        "mlp.up_proj.weight": ("gate_up_weight", inter, inter),
        "mlp.down_proj.weight": ("down_weight", 0, None),
        "mlp.gate_proj.bias": ("gate_up_bias", 0, inter),
        "mlp.up_proj.bias": ("gate_up_bias", inter, inter),
        "mlp.down_proj.bias": ("down_bias", 0, None),
    }
    hit = table.get(rest)
    return (p + hit[0], hit[1], hit[2]) if hit else None


def load_model(
    model_dir: str | Path,
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
) -> LlamaForCausalLM:
    """Build the decoder and fill every parameter from the checkpoint; any gap is an error."""
    root = Path(model_dir)
    files = checkpoint_files(root)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate parameters in the serving dtype directly
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg, max_positions)
    finally:
        torch.set_default_dtype(previous)
    params = dict(model.named_parameters(remove_duplicate=False))
    filled: dict[str, int] = {}
    for name, tensor in iter_tensors(files):
        target = _target_of(name, cfg)
        if target is None:
            continue
        pname, offset, rows = target
        param = params.get(pname)
        if param is None:
            raise ModelLoadError(f"{root}: checkpoint has {name!r} but the config does not use it")
        rows = param.shape[0] if rows is None else rows
        dest = param.data[offset : offset + rows]
        if dest.shape != tensor.shape:
            raise ModelLoadError(
                f"{root}: {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)} from config.json"
            )
        dest.copy_(tensor.to(dtype))
        filled[pname] = filled.get(pname, 0) + rows
    missing = [
        n
        for n, p in params.items()
        if filled.get(n, 0) != p.shape[0] and not (n == "lm_head" and cfg.tie_word_embeddings)
    ]
    if missing:
        raise ModelLoadError(
            f"{root}: checkpoint lacks weights for {missing[:6]}{'...' if len(missing) > 6 else ''}"
        )
    model.eval()
    return model
