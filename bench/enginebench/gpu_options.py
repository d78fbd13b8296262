"""Command-line options of ``bench/engine_gpu.py``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

# Llama-2-7B layer shapes; "tiny" runs the same code on a CPU in seconds.
SHAPES = {
    "7b": {"hidden": 4096, "intermediate": 11008, "heads": 32, "kv_heads": 32},
    "tiny": {"hidden": 128, "intermediate": 256, "heads": 2, "kv_heads": 2},
}


@dataclass(frozen=True)
class GpuArgs:
    device: str
    dtype: str
    shape: str
    layers: int
    requests: int
    prompt_len: int
    output_len: int
    adapters: int
    rank: int
    repeats: int
    warmup: str
    hf: bool
    hf_output_len: int
    md: str | None
    json: str | None

    @property
    def dims(self) -> dict[str, int]:
        return SHAPES[self.shape]


def parse_gpu_args(argv: Sequence[str] | None = None, description: str | None = None) -> GpuArgs:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--shape", default="7b", choices=sorted(SHAPES), help="layer shapes")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--adapters", type=int, default=32, help="distinct adapters (rank --rank)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the first; best kept")
    p.add_argument("--warmup", default="full", choices=["full", "light", "off"])
    p.add_argument("--no-hf", dest="hf", action="store_false", help="skip HF transformers + PEFT")
    p.add_argument(
        "--hf-output-len", type=int, default=0, help="HF tokens per request (0: --output-len)"
    )
    p.add_argument("--md", help="write the section body (markdown) here")
    p.add_argument("--json", help="write every number here")
    a = p.parse_args(argv)
    if a.output_len < 2 or a.prompt_len < 1 or a.requests < 1 or a.adapters < 1:
        p.error("need --output-len >= 2 and positive --prompt-len, --requests, --adapters")
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    return GpuArgs(
        a.device,
        a.dtype,
        a.shape,
        a.layers,
        a.requests,
        a.prompt_len,
        a.output_len,
        a.adapters,
        a.rank,
        a.repeats,
        a.warmup,
        a.hf,
        a.hf_output_len or a.output_len,
        a.md,
        a.json,
    )
