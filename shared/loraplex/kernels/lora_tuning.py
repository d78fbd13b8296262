"""Block sizes of the v2 LoRA kernels: a heuristic default per shape, replaced by the fastest of a
few candidates when ``tune`` has timed them (at worker start-up, see ``lora_warmup``).

A shape is keyed by what changes the best tiling: decode or prefill, rows per group (a power-of-two
bucket of the batch for decode, of the longest segment for prefill), H_in, the widest H_out and the
number of fused slices, and the dtype.  Choices are made on the host only, so a cached choice costs
nothing per call and never syncs; on the CPU interpreter one small fixed config is used (it also
exercises split-K and the rank and K loops on test-sized shapes).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from loraplex.kernels.triton_lora_kernels import INTERPRETED


@dataclass(frozen=True)
class ShrinkConfig:
    block_m: int  # rows per tile (tl.dot needs >= 16)
    block_r: int  # rank tile; a program walks ceil(r / block_r) of them
    block_k: int  # H_in tile
    split_k: int  # programs sharing one reduction over H_in (partials summed by the expand)
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class ExpandConfig:
    block_m: int
    block_n: int  # H_out tile
    block_r: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class LoraKernelConfig:
    shrink: ShrinkConfig
    expand: ExpandConfig


@dataclass(frozen=True)
class ShapeKey:
    kind: str  # "bgmv" (decode rows, grouped on the device) or "sgmv" (prefill segments)
    rows: int  # power-of-two bucket: decode batch, or the longest prefill segment
    h_in: int
    h_out: int  # widest slice
    n_slices: int
    dtype: str
    groups: int = 0  # sgmv: segments x row tiles bucket (small prefills get split-K); bgmv: 0


def bucket(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


# The interpreter runs programs one after another in numpy: small tiles, and split-K on so CPU
# tests cover the partial sums.
INTERPRETER_CONFIG = LoraKernelConfig(
    ShrinkConfig(block_m=16, block_r=16, block_k=32, split_k=2),
    ExpandConfig(block_m=16, block_n=32, block_r=16),
)

_TUNED: dict[ShapeKey, LoraKernelConfig] = {}


def default_config(key: ShapeKey) -> LoraKernelConfig:
    """The untuned choice for ``key`` (GPU); see the module docstring for the interpreter's."""
    block_m = min(max(bucket(key.rows), 16), 64)
    if key.kind == "bgmv":
        # Decode is a read of A and B: split H_in so ~8+ programs share each adapter's A.
        split = min(max(key.h_in // 512, 1), 16)
        shrink = ShrinkConfig(block_m, 16, 128, split)
    else:
        # Prefill has row tiles to spread; split only when there are few of them.
        split = 1 if key.groups >= 64 else min(max(key.h_in // 1024, 1), 8)
        shrink = ShrinkConfig(block_m, 16, 64, split)
    return LoraKernelConfig(shrink, ExpandConfig(block_m, 128, 16))


def config_for(key: ShapeKey) -> LoraKernelConfig:
    if INTERPRETED:
        return INTERPRETER_CONFIG
    return _TUNED.get(key) or default_config(key)


def tuned() -> dict[ShapeKey, LoraKernelConfig]:
    """A copy of the choices made by ``tune`` so far."""
    return dict(_TUNED)


def clear_tuned() -> None:
    _TUNED.clear()


def candidates(key: ShapeKey) -> tuple[list[ShrinkConfig], list[ExpandConfig]]:
    """A few configs around the default (each costs a compile at start-up): split-K and the H_in
    tile for the shrink, the H_out tile for the expand."""
    bm = default_config(key).shrink.block_m
    splits = (4, 8, 16) if key.kind == "bgmv" else (1, 4)
    tiles = (128, 256) if key.kind == "bgmv" else (64, 128)
    shrinks = [ShrinkConfig(bm, 16, bk, s) for s in splits for bk in tiles]
    expands = [ExpandConfig(bm, bn, 16) for bn in (64, 128, 256)]
    return shrinks, expands


def _median_time(fn: Callable[[], None], reps: int) -> float:
    fn()  # compile + warm up
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def tune(
    key: ShapeKey,
    run_shrink: Callable[[ShrinkConfig], None],
    run_expand: Callable[[ExpandConfig, ShrinkConfig], None],
    reps: int = 10,
    shrinks: Sequence[ShrinkConfig] | None = None,
    expands: Sequence[ExpandConfig] | None = None,
) -> LoraKernelConfig:
    """Time the candidates of ``key`` on CUDA (shrink first, then the expand reading the chosen
    shrink's partials), cache and return the fastest pair.  Without CUDA: the default."""
    if INTERPRETED or not torch.cuda.is_available():
        return config_for(key)
    if key in _TUNED:
        return _TUNED[key]
    default_shrinks, default_expands = candidates(key)
    shrink_list = list(shrinks or default_shrinks)
    best_shrink = min(shrink_list, key=lambda c: _median_time(lambda: run_shrink(c), reps))
    expand_list = list(expands or default_expands)
    best_expand = min(
        expand_list, key=lambda c: _median_time(lambda: run_expand(c, best_shrink), reps)
    )
    _TUNED[key] = chosen = LoraKernelConfig(best_shrink, best_expand)
    return chosen
