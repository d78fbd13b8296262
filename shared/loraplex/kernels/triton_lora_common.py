"""Argument checks and launch helpers shared by both generations of the Triton LoRA kernels
(``triton_lora``: v1, ``triton_lora_v2``: v2).  Checks read shapes, dtypes and strides only, never
device values, so they cost no host sync and are safe under CUDA-graph capture."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from loraplex.kernels import triton_lora_kernels as K

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INTS = (torch.int32, torch.int64)
MAX_SLICES_PER_LAUNCH = 3  # kernels take up to three slices as separate arguments


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_float(name: str, t: Tensor, ndim: int) -> None:
    check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check(t.dtype in FLOATS, f"{name} must be float32/float16/bfloat16, got {t.dtype}")
    check(t.dim() == ndim, f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    # Kernels index the innermost dim with unit stride; outer strides are passed through.
    check(t.numel() == 0 or t.stride(-1) == 1, f"{name} must be contiguous in its last dim")


def check_int(name: str, t: Tensor, length: int | None = None) -> None:
    check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check(t.dtype in INTS, f"{name} must be int32/int64, got {t.dtype}")
    check(t.dim() == 1, f"{name} must be 1-D, got shape {tuple(t.shape)}")
    check(t.is_contiguous(), f"{name} must be contiguous")
    if length is not None:
        check(t.shape[0] == length, f"{name} must have {length} entries, got {t.shape[0]}")


def check_device(*tensors: Tensor) -> None:
    devs = {t.device for t in tensors}
    check(len(devs) == 1, f"all tensors must be on one device, got {sorted(map(str, devs))}")


def check_slices(ws: Sequence[Tensor], n_r: int, n_v: int) -> None:
    n = len(ws)
    check(n > 0, "need at least one slice")
    check(n == n_r == n_v, f"slice lists differ in length: {n} weights, {n_r} ranks, {n_v} outs")
    # One launch shares its dot settings across slices.
    check(len({w.dtype for w in ws}) == 1, "all slices' LoRA weights must share one dtype")


def dot_opts(dtype: torch.dtype) -> dict:
    # fp32 weights: exact products like the torch twin (no silent tf32).
    prec = "ieee" if dtype == torch.float32 else "tf32"
    # The CPU interpreter's tl.dot is wrong for bf16 (see triton_lora_kernels._dot).
    upcast = dtype == torch.bfloat16 and K.INTERPRETED
    return {"DOT_PREC": prec, "UPCAST": upcast}


def validate_shrink(x, lora_as, ranks_list, vs) -> None:
    check_slices(lora_as, len(ranks_list), len(vs))
    check_float("x", x, 2)
    for i, (a, rk, v) in enumerate(zip(lora_as, ranks_list, vs, strict=True)):
        check_float(f"lora_a[{i}]", a, 3)
        check_float(f"v[{i}]", v, 2)
        check_int(f"ranks[{i}]", rk, a.shape[0])
        check(a.dtype == x.dtype, f"lora_a[{i}] dtype {a.dtype} != x dtype {x.dtype}")
        check(a.shape[2] == x.shape[1], f"lora_a[{i}] H_in {a.shape[2]} != x H_in {x.shape[1]}")
        check(
            tuple(v.shape) == (x.shape[0], a.shape[1]),
            f"v[{i}] must be [T, R] = {(x.shape[0], a.shape[1])}, got {tuple(v.shape)}",
        )
        check_device(x, a, rk, v)


def validate_expand(vs, lora_bs, ranks_list, y, offsets) -> None:
    check_slices(lora_bs, len(ranks_list), len(vs))
    check_float("y", y, 2)
    check(len(offsets) == len(lora_bs), f"need {len(lora_bs)} y_offsets, got {len(offsets)}")
    for i, (v, b, rk, off) in enumerate(zip(vs, lora_bs, ranks_list, offsets, strict=True)):
        check_float(f"lora_b[{i}]", b, 3)
        check_float(f"v[{i}]", v, 2)
        check_int(f"ranks[{i}]", rk, b.shape[0])
        check(
            tuple(v.shape) == (y.shape[0], b.shape[2]),
            f"v[{i}] must be [T, R] = {(y.shape[0], b.shape[2])}, got {tuple(v.shape)}",
        )
        check(
            off >= 0 and off + b.shape[1] <= y.shape[1],
            f"slice {i}: y[:, {off}:{off + b.shape[1]}] out of range for y width {y.shape[1]}",
        )
        check_device(y, v, b, rk)


def validate_lora(x, lora_as, lora_bs, ranks_list, y, offsets) -> None:
    """Checks of a shrink + expand in one call (no ``v`` from the caller)."""
    check_slices(lora_as, len(ranks_list), len(lora_bs))
    check_slices(lora_bs, len(ranks_list), len(lora_as))
    check_float("x", x, 2)
    check_float("y", y, 2)
    check(x.shape[0] == y.shape[0], f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    check(len(offsets) == len(lora_bs), f"need {len(lora_bs)} y_offsets, got {len(offsets)}")
    for i, (a, b, rk, off) in enumerate(zip(lora_as, lora_bs, ranks_list, offsets, strict=True)):
        check_float(f"lora_a[{i}]", a, 3)
        check_float(f"lora_b[{i}]", b, 3)
        check_int(f"ranks[{i}]", rk, a.shape[0])
        check(a.dtype == x.dtype, f"lora_a[{i}] dtype {a.dtype} != x dtype {x.dtype}")
        check(a.shape[2] == x.shape[1], f"lora_a[{i}] H_in {a.shape[2]} != x H_in {x.shape[1]}")
        check(
            b.shape[0] == a.shape[0] and b.shape[2] == a.shape[1],
            f"lora_b[{i}] must be [S, H_out, R] with S, R of lora_a {tuple(a.shape)}, "
            f"got {tuple(b.shape)}",
        )
        check(
            off >= 0 and off + b.shape[1] <= y.shape[1],
            f"slice {i}: y[:, {off}:{off + b.shape[1]}] out of range for y width {y.shape[1]}",
        )
        check_device(x, y, a, b, rk)


def default_offsets(lora_bs: Sequence[Tensor]) -> list[int]:
    offs, acc = [], 0
    for b in lora_bs:
        offs.append(acc)
        acc += b.shape[1]
    return offs


def chunks(n: int) -> list[range]:
    step = MAX_SLICES_PER_LAUNCH
    return [range(i, min(i + step, n)) for i in range(0, n, step)]


def pad3(args: list[tuple]) -> list:
    """Flatten per-slice argument tuples, repeating the first slice as a dummy up to three."""
    full = args + [args[0]] * (MAX_SLICES_PER_LAUNCH - len(args))
    return [a for tup in full for a in tup]
