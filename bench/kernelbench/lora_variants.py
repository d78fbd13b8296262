"""LoRA variants (engine at real rank with the v1 and the v2 kernels, padded, gather-bmm,
per-adapter loop), their check against the torch twins, the floor, and the LoRA part of the
benchmark."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace

import torch

from loraplex.kernels import torch_ref
from loraplex.kernels.dispatch import get_ops
from loraplex.lora.apply import add_lora
from loraplex.lora.weights import LoraWeights

from .config import log
from .env import Env
from .fmt import fmt_us
from .lora_cases import LoraCase, LoraSetup, build_setup, lora_cases

# The variants.  Each adds the LoRA delta of every group into ``ys`` in place.


def run_engine(
    s: LoraSetup, weights: LoraWeights, ops: SimpleNamespace, plan: object = None
) -> None:
    """The engine's path: ``add_lora`` with fused SGMV/BGMV (real ranks unless ``weights`` is
    padded).  ``plan``: the decode rows' grouping, made once per step by the engine for all
    layers, so made once here too, outside the timed call (its own time: ``plan_v2``)."""
    for g, x, y in zip(s.groups, s.xs, s.ys, strict=True):
        add_lora(y, x, 0, g.slices, weights, s.meta, ops, plan)  # type: ignore[arg-type]


def run_loop(s: LoraSetup) -> None:
    """Per-adapter loop: rows of each adapter gathered, ``(x_g @ A^T) @ B^T`` at the real rank."""
    w = s.weights
    for g, x, y in zip(s.groups, s.xs, s.ys, strict=True):
        for slot, rows in s.blocks:
            r = s.slot_rank[slot]
            xg = x[rows]
            for (t, off), out in zip(g.slices, g.outs, strict=True):
                delta = (xg @ w.a[t][0, slot, :r].T) @ w.b[t][0, slot, :, :r].T
                y[rows, off : off + out] += delta


def run_gather_bmm(s: LoraSetup) -> None:
    """Torch gather + bmm with every adapter padded to the batch's largest rank."""
    w, r, gi = s.weights, s.rmax, s.gather
    for g, x, y in zip(s.groups, s.xs, s.ys, strict=True):
        if s.case.mode == "bgmv":
            for (t, off), out in zip(g.slices, g.outs, strict=True):
                v = torch.bmm(w.a[t][0][gi.idx, :r], x.unsqueeze(-1))  # [T, r, 1]
                y[:, off : off + out] += torch.bmm(w.b[t][0][gi.idx, :, :r], v).squeeze(-1)
        else:
            xp = x[gi.rows]  # [G, Lmax, in]
            for (t, off), out in zip(g.slices, g.outs, strict=True):
                v = torch.bmm(xp, w.a[t][0][gi.slots, :r].transpose(1, 2))  # [G, Lmax, r]
                d = torch.bmm(v, w.b[t][0][gi.slots, :, :r].transpose(1, 2))  # [G, Lmax, out]
                y[:, off : off + out] += d.flatten(0, 1)[gi.flat]


def reference_deltas(s: LoraSetup) -> list[torch.Tensor]:
    """fp32 deltas from the project's oracle (the torch twins) on fp32 copies of the weights."""
    w, m, out = s.weights, s.meta, []
    for g, x in zip(s.groups, s.xs, strict=True):
        y = torch.zeros(x.shape[0], g.width, dtype=torch.float32, device=x.device)
        for t, off in g.slices:
            a, b, rk = w.a[t][0].float(), w.b[t][0].float(), w.ranks[t][0]
            v = torch.zeros(x.shape[0], w.max_rank, dtype=torch.float32, device=x.device)
            if m.is_prefill:
                torch_ref.sgmv_shrink(x.float(), a, m.seg_starts, m.seg_slots, rk, v)
                torch_ref.sgmv_expand(v, b, m.seg_starts, m.seg_slots, rk, y, off)
            else:
                torch_ref.bgmv_shrink(x.float(), a, m.indices, rk, v)
                torch_ref.bgmv_expand(v, b, m.indices, rk, y, off)
        out.append(y)
    return out


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def restore(s: LoraSetup, pristine: list[torch.Tensor]) -> None:
    for y, y0 in zip(s.ys, pristine, strict=True):
        y.copy_(y0)


def check_variant(
    s: LoraSetup, fn: Callable[[], None], ref: list[torch.Tensor], pristine: list[torch.Tensor]
) -> float:
    """Largest relative error of the delta ``fn`` adds to the setup's original ``ys`` (restored
    first: timing runs add their deltas up, and a delta read off a y grown tens of times larger
    loses its low bits to rounding, which showed as max err 2e-01 for every variant timed after
    the first), against ``ref``; ``ys`` are restored after."""
    restore(s, pristine)
    fn()
    err = max(
        rel_err(y.float() - y0.float(), r) for y, y0, r in zip(s.ys, pristine, ref, strict=True)
    )
    restore(s, pristine)
    return err if math.isfinite(err) else float("inf")


def lora_traffic(s: LoraSetup, elem: int) -> tuple[int, int]:
    """(bytes, FLOPs) of an ideal kernel: x read, y read + written, and the real-rank A and B
    of each used adapter read once (the rank-r intermediate never leaves the chip)."""
    nbytes = flops = 0
    rows = sum(s.rows_per_slot.values())
    for g in s.groups:
        per_rank = g.in_features * len(g.outs) + g.width  # A and B elements per unit of rank
        nbytes += elem * (rows * g.in_features + 2 * rows * g.width)
        for slot, n in s.rows_per_slot.items():
            r = s.slot_rank[slot]
            nbytes += elem * r * per_rank
            flops += 2 * n * r * per_rank
    return nbytes, flops


VARIANTS = ("real", "v2", "padded", "padded_v2", "gather", "loop")  # "real": the v1 kernels


@dataclass
class LoraRow:
    case: LoraCase
    rows: int
    used_adapters: int
    segments: int
    rmax: int
    nbytes: int
    flops: int
    floor_s: float
    bound: str
    times: dict[str, float] = field(default_factory=dict)  # variant -> median seconds (nan: failed)
    how: dict[str, str] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def x_floor(self) -> float:
        return self.x_floor_of("real")

    def x_floor_of(self, variant: str) -> float:
        return self.times.get(variant, math.nan) / self.floor_s


def variant_fns(s: LoraSetup, env: Env) -> dict[str, Callable[[], None]]:
    v1, v2 = get_ops(env.device, "v1"), get_ops(env.device, "v2")
    plan = None if s.meta.is_prefill else v2.bgmv_plan(s.meta.indices, s.weights.max_loras)
    return {
        "real": partial(run_engine, s, s.weights, v1),
        "v2": partial(run_engine, s, s.weights, v2, plan),
        "padded": partial(run_engine, s, s.padded, v1),
        "padded_v2": partial(run_engine, s, s.padded, v2, plan),
        "gather": partial(run_gather_bmm, s),
        "loop": partial(run_loop, s),
    }


def time_plan(s: LoraSetup, env: Env) -> float:
    """Seconds of v2's decode plan (sort + group of the rows; once per step in the engine)."""
    v2 = get_ops(env.device, "v2")
    if s.meta.is_prefill or getattr(v2, "lora_kernel", "") != "v2":
        return math.nan
    return env.timer.time(lambda: v2.bgmv_plan(s.meta.indices, s.weights.max_loras)).seconds


def bench_lora_case(case: LoraCase, env: Env, salt: int) -> LoraRow:
    s = build_setup(case, env, salt)
    nbytes, flops = lora_traffic(s, env.elem)
    floor_s, bound = env.floor(nbytes, flops)
    row = LoraRow(
        case,
        sum(s.rows_per_slot.values()),
        len(s.rows_per_slot),
        len(s.blocks),
        s.rmax,
        nbytes,
        flops,
        floor_s,
        bound,
    )
    ref = reference_deltas(s)
    pristine = [y.clone() for y in s.ys]
    for name, fn in variant_fns(s, env).items():
        try:
            row.errors[name] = check_variant(s, fn, ref, pristine)
            t = env.timer.time(fn)
            row.times[name], row.how[name] = t.seconds, t.how
            restore(s, pristine)
        except Exception as e:  # noqa: BLE001 - one failed variant must not end the run
            log(f"    {name} failed: {type(e).__name__}: {str(e)[:200]}")
            row.errors.setdefault(name, math.nan)
            row.times[name] = math.nan
            if env.device.type == "cuda":
                torch.cuda.synchronize()
    try:
        row.times["plan_v2"] = time_plan(s, env)
    except Exception as e:  # noqa: BLE001 - report, keep the row
        log(f"    plan_v2 failed: {type(e).__name__}: {str(e)[:200]}")
    del s, ref
    if env.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def bench_lora(env: Env) -> list[LoraRow]:
    cases = lora_cases(env.grid)
    rows = []
    for i, case in enumerate(cases):
        row = bench_lora_case(case, env, salt=i)
        log(
            f"  lora {i + 1}/{len(cases)} {case.mode} {case.group} req={case.requests}x{case.tokens} "
            f"n={case.adapters} {case.popularity} r={case.rank_label}: "
            + ", ".join(f"{k} {fmt_us(v)}" for k, v in row.times.items())
            + f", floor {fmt_us(row.floor_s)} us"
        )
        rows.append(row)
    return rows
