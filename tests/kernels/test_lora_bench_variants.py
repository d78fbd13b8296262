"""bench/kernels.py's LoRA variants (v1 and v2 at real rank, padded, gather-bmm, per-adapter
loop) compute the torch twins' delta within the dtype's tolerance, checked the way the benchmark
checks them: each after the previous variants were timed (their timing runs add their deltas up).

In bf16 on CPU, with the torch twins behind the engine's path (the Triton kernels have their own
twin tests); the benchmark's GPU run reported ``max err 2e-01 FAIL: padded, gather, loop``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest
import torch

from loraplex.kernels.dispatch import get_ops
from loraplex.model.config import ModelConfig

BENCH = str(Path(__file__).resolve().parents[2] / "bench")


def _import_bench(name: str):  # type: ignore[no-untyped-def]
    """A module of bench/kernelbench, with bench/ on sys.path only while importing: bench/ holds
    a ``kernels.py`` that would shadow the ``kernels`` package transformers looks for."""
    sys.path.insert(0, BENCH)
    try:
        return importlib.import_module(f"kernelbench.{name}")
    finally:
        sys.path.remove(BENCH)


config, env_mod = _import_bench("config"), _import_bench("env")
lora_cases, variants = _import_bench("lora_cases").lora_cases, _import_bench("lora_variants")
timing = _import_bench("timing")
SMOKE_GRID, TINY, Env = config.SMOKE_GRID, config.TINY, env_mod.Env


@pytest.fixture
def bf16_env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LORAPLEX_TRITON_ON_CPU", raising=False)
    cfg = ModelConfig.from_hf_dict({**TINY, "num_hidden_layers": 1})
    args = argparse.Namespace(seed=0, zipf_alpha=1.0)
    cpu = torch.device("cpu")
    env = Env(
        True, cpu, torch.bfloat16, get_ops(cpu), timing.CpuTimer(20, 2), SMOKE_GRID, cfg, args
    )
    env.copy_bw, env.mm_rate = 1e10, 1e10  # floors only; not asserted here
    return env


def _pick(sweep: str, mode: str, mixed: bool = False):  # type: ignore[no-untyped-def]
    cases = [c for c in lora_cases(SMOKE_GRID) if c.sweep == sweep and c.mode == mode]
    if mixed:
        cases = [c for c in cases if len(set(c.ranks)) > 1 and c.group == "layer"]
    return cases[-1]


@pytest.mark.parametrize(
    "case",
    [
        _pick("rank", "bgmv", mixed=True),
        _pick("rank", "sgmv", mixed=True),
        _pick("load", "bgmv"),
        _pick("scale", "bgmv"),  # more adapters than rows
    ],
    ids=lambda c: f"{c.sweep}-{c.mode}-{c.group}-n{c.adapters}-{c.popularity}",
)
def test_every_variant_adds_the_twins_delta(case, bf16_env) -> None:  # type: ignore[no-untyped-def]
    row = variants.bench_lora_case(case, bf16_env, salt=3)
    assert set(row.errors) == set(variants.VARIANTS)
    bad = {k: e for k, e in row.errors.items() if not e <= bf16_env.tol}
    assert not bad, f"variants off the twins' delta (tol {bf16_env.tol}): {bad}"
    assert all(row.times[v] > 0 for v in variants.VARIANTS)
