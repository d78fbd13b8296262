"""Compile (and, for v2 on CUDA, tune) every LoRA kernel specialisation a worker will launch, at
start-up, so nothing compiles while serving.

``warm_up_lora_kernels`` runs the projection groups of one decoder layer (q|k|v, o, gate|up, down,
as ``DecoderLayer`` calls ``add_lora``) through the kernel namespace the engine uses, on synthetic
slot stacks of the engine's shapes: every decode batch size (BGMV, rows spread over the slots) and
prefill segments covering each row-tile size and split choice (SGMV).  With ``tune`` (v2, CUDA),
each decode shape first times a few block-size candidates (``lora_tuning.tune``) and keeps the
fastest; the serving calls then find that choice in the cache.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loraplex import env
from loraplex.kernels import lora_tuning
from loraplex.kernels.dispatch import get_ops
from loraplex.model.config import ModelConfig


@dataclass(frozen=True)
class LoraWarmup:
    kernel: str  # "v1", "v2" or "torch" (nothing to compile)
    seconds: float
    launches: int  # add_lora-sized calls made (each one shrink + one expand per slice chunk)
    tuned: tuple[lora_tuning.ShapeKey, ...]  # shapes whose block sizes were timed


def layer_groups(cfg: ModelConfig) -> list[tuple[int, tuple[int, ...]]]:
    """(H_in, H_out of each slice) of the four ``add_lora`` calls of one decoder layer."""
    q, kv, h, i = cfg.q_size, cfg.kv_size, cfg.hidden_size, cfg.intermediate_size
    return [(h, (q, kv, kv)), (q, (h,)), (h, (i, i)), (i, (h,))]


def _prefill_shapes(prefill_tokens: int) -> list[list[int]]:
    """Segment lengths that reach every prefill tiling: short / medium / long segments (row tiles
    of 16 / 32 / 64), few segments (split-K on) and many (split-K off)."""
    t = max(prefill_tokens, 1)
    shapes = [[min(8, t)], [min(48, t)], [t], [max(t // 128, 1)] * min(128, t)]
    return [s for s in shapes if sum(s) <= t] or [[t]]


def warm_up_lora_kernels(
    cfg: ModelConfig,
    num_slots: int,
    max_rank: int,
    dtype: torch.dtype,
    device: torch.device,
    decode_sizes: Sequence[int],
    prefill_tokens: int,
    kernel: str | None = None,
    tune: bool | None = None,
) -> LoraWarmup:
    """Launch every LoRA kernel shape of this model once (``kernel``: "v1"/"v2", default
    ``LORAPLEX_LORA_KERNEL``; ``tune``: default ``LORAPLEX_LORA_AUTOTUNE``, v2 on CUDA only).

    ``num_slots``, ``max_rank``: the engine's ``max_loras`` and ``max_lora_rank``;
    ``decode_sizes``: the decode batch sizes served (the CUDA-graph sizes, or 1..max_num_seqs);
    ``prefill_tokens``: ``max_num_batched_tokens``.
    """
    start = time.perf_counter()
    ops = get_ops(device, kernel)
    name = getattr(ops, "lora_kernel", "torch")
    if ops.backend != "triton":
        return LoraWarmup(name, 0.0, 0, ())
    tune = env.LORA_AUTOTUNE.get() if tune is None else tune
    tune = tune and name == "v2" and device.type == "cuda"
    gen = torch.Generator(device=device).manual_seed(0)
    rank = min(16, max_rank)  # a typical adapter: block sizes are timed at rank 16
    ranks = torch.full((num_slots,), rank, dtype=torch.int32, device=device)
    launches, tuned = 0, []
    with torch.inference_mode():
        for h_in, outs in layer_groups(cfg):
            a_s = [_randn((num_slots, max_rank, h_in), dtype, gen) for _ in outs]
            b_s = [_randn((num_slots, out, max_rank), dtype, gen) for out in outs]
            rk = [ranks] * len(outs)
            for size in sorted(set(decode_sizes)):
                x = _randn((size, h_in), dtype, gen)
                y = torch.zeros(size, sum(outs), dtype=dtype, device=device)
                idx = torch.arange(size, dtype=torch.int32, device=device) % num_slots
                plan = ops.bgmv_plan(idx, num_slots)
                if tune:
                    tuned.append(_tune(x, a_s, b_s, rk, y, plan))
                ops.bgmv_lora(x, a_s, b_s, idx, rk, y, plan=plan)
                launches += 1
            for lens in _prefill_shapes(prefill_tokens):
                t = sum(lens)
                starts = torch.tensor(
                    [0, *itertools.accumulate(lens)], dtype=torch.int32, device=device
                )
                slots = torch.arange(len(lens), dtype=torch.int32, device=device) % num_slots
                x = _randn((t, h_in), dtype, gen)
                y = torch.zeros(t, sum(outs), dtype=dtype, device=device)
                ops.sgmv_lora(x, a_s, b_s, starts, slots, rk, y, max_seg_len=max(lens))
                launches += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LoraWarmup(name, time.perf_counter() - start, launches, tuple(dict.fromkeys(tuned)))


def _tune(x, a_s, b_s, rk, y, plan) -> lora_tuning.ShapeKey:  # type: ignore[no-untyped-def]
    from loraplex.kernels.triton_lora_v2 import tuning_runners

    key, run_shrink, run_expand = tuning_runners(x, a_s, b_s, rk, y.clone(), plan)
    lora_tuning.tune(key, run_shrink, run_expand)
    return key


def _randn(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, device=gen.device) * 0.05).to(dtype)
