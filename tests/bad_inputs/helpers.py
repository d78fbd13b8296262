"""Constants and file-editing helpers for the bad-input tests: the tiny model spec and
engine options, tensor names, and functions that copy a model or adapter directory and
corrupt its JSON or safetensors files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from loraplex.tooling.demo import TinyModelSpec

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
