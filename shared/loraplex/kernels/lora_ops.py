"""The LoRA names of each kernel namespace: which Triton generation serves them, and the combined
``sgmv_lora`` / ``bgmv_lora`` (shrink + expand of one projection group) for backends that only
have the two halves.

``add_lora`` makes one call per projection group whatever the backend: v2 runs it as its own
split-K kernels; v1 and the torch twins run shrink into an fp32 ``v`` then expand, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from loraplex import env

LORA_KERNELS = ("v1", "v2")
OP_NAMES = ("sgmv_shrink", "sgmv_expand", "bgmv_shrink", "bgmv_expand")
FUSED_NAMES = tuple(f"{n}_fused" for n in OP_NAMES)
COMBINED_NAMES = ("sgmv_lora", "bgmv_lora", "bgmv_plan")


def lora_kernel(choice: str | None = None) -> str:
    """The Triton generation to use: ``choice``, else ``LORAPLEX_LORA_KERNEL`` (default v1)."""
    name = (choice or env.LORA_KERNEL.get()).strip().lower()
    if name not in LORA_KERNELS:
        raise ValueError(f"LORAPLEX_LORA_KERNEL must be one of {LORA_KERNELS}, got {name!r}")
    return name


def _scratch(x: Tensor, lora_as: Sequence[Tensor]) -> list[Tensor]:
    # fp32 intermediate: the rank-r activations are small and accumulate better in full precision.
    return [
        torch.empty(x.shape[0], a.shape[1], dtype=torch.float32, device=x.device) for a in lora_as
    ]


def combined(shrink_fused: Callable[..., None], expand_fused: Callable[..., None], kind: str):
    """``sgmv_lora`` (kind "sgmv") or ``bgmv_lora`` ("bgmv") from a backend's two halves."""
    if kind == "sgmv":

        def sgmv_lora(x, lora_as, lora_bs, seg_starts, seg_slots, ranks_list, y, y_offsets=None,
                      max_seg_len=None) -> None:  # fmt: skip
            vs = _scratch(x, lora_as)
            segs = (seg_starts, seg_slots)
            shrink_fused(x, lora_as, *segs, ranks_list, vs, max_seg_len=max_seg_len)
            expand_fused(vs, lora_bs, *segs, ranks_list, y, y_offsets, max_seg_len=max_seg_len)

        return sgmv_lora

    def bgmv_lora(x, lora_as, lora_bs, indices, ranks_list, y, y_offsets=None, plan=None) -> None:
        vs = _scratch(x, lora_as)  # ``plan``: only v2 groups rows; accepted and unused here
        shrink_fused(x, lora_as, indices, ranks_list, vs)
        expand_fused(vs, lora_bs, indices, ranks_list, y, y_offsets)

    return bgmv_lora


def no_plan(indices: Tensor, num_slots: int) -> None:
    """``bgmv_plan`` of backends that take decode rows unsorted as they are."""
    return None


def lora_names(module: ModuleType | Any, with_plan: bool) -> dict[str, Callable[..., Any]]:
    """Every LoRA name of a namespace from ``module`` (its own combined ops when it has them)."""
    names = {n: getattr(module, n) for n in OP_NAMES + FUSED_NAMES}
    if with_plan:
        names.update({n: getattr(module, n) for n in COMBINED_NAMES})
    else:
        names["sgmv_lora"] = combined(
            names["sgmv_shrink_fused"], names["sgmv_expand_fused"], "sgmv"
        )
        names["bgmv_lora"] = combined(
            names["bgmv_shrink_fused"], names["bgmv_expand_fused"], "bgmv"
        )
        names["bgmv_plan"] = no_plan
    return names


def triton_lora_names(kernel: str) -> dict[str, Callable[..., Any]]:
    """The LoRA names of the Triton namespace for ``kernel`` ("v1" or "v2"); imports Triton."""
    if kernel == "v2":
        from loraplex.kernels import triton_lora_v2

        return lora_names(triton_lora_v2, with_plan=True)
    from loraplex.kernels import triton_lora

    return lora_names(triton_lora, with_plan=False)
