"""Pick the kernel implementation for a device: Triton where it can run, the torch twins elsewhere.

Both namespaces returned by ``get_ops`` expose the same names: ``sgmv_shrink``, ``sgmv_expand``,
``bgmv_shrink``, ``bgmv_expand``, their ``*_fused`` variants, ``store_kv``,
``paged_decode_attention``, ``prefill_attention`` and ``prefill_attention_paged``.  Prefill
attention on the Triton path is ``flex_prefill`` (one compiled FlexAttention launch for the packed
batch on CUDA, measured 21x faster than one SDPA per prompt on an H200; it falls back to the twins
on CPU and for inputs it does not support).  Triton is imported only when the Triton path is
chosen, so this module works on hosts without it.

Environment:
* ``LORAPLEX_DISABLE_TRITON=1``: always use the torch twins.
* ``TRITON_INTERPRET=1`` and ``LORAPLEX_TRITON_ON_CPU=1``: use Triton (interpreted) on CPU too, so
  tests can drive the engine through the Triton path without a GPU.
* ``LORAPLEX_LORA_KERNEL=v1|v2``: which Triton multi-LoRA kernels (``lora_ops``; v1 default
  until both are measured).  Every namespace also has ``sgmv_lora``/``bgmv_lora`` (shrink +
  expand of one projection group, what ``add_lora`` calls) and ``bgmv_plan``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import cache
from types import SimpleNamespace

import torch

from loraplex import env
from loraplex.kernels import lora_ops, torch_ref

_OP_NAMES = ("sgmv_shrink", "sgmv_expand", "bgmv_shrink", "bgmv_expand")
_FUSED_NAMES = tuple(f"{n}_fused" for n in _OP_NAMES)


def _triton_interpreting() -> bool:
    # Triton's own variable, not a LORAPLEX_* one, so it is read here and not in the registry.
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(device: torch.device | str) -> bool:
    """Whether kernels for ``device`` should run through Triton (env is read on every call)."""
    if env.DISABLE_TRITON.get() or not _triton_importable():
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        return True
    return dev.type == "cpu" and _triton_interpreting() and env.TRITON_ON_CPU.get()


# Torch fallbacks for the fused ops: one twin call per slice, same semantics as the Triton ones.


def _offsets(lora_bs: Sequence[torch.Tensor], y_offsets: Sequence[int] | None) -> list[int]:
    if y_offsets is not None:
        return list(y_offsets)
    offs, acc = [], 0
    for b in lora_bs:
        offs.append(acc)
        acc += b.shape[1]
    return offs


def _sgmv_shrink_fused(x, lora_as, seg_starts, seg_slots, ranks_list, vs, max_seg_len=None):
    for a, rk, v in zip(lora_as, ranks_list, vs, strict=True):
        torch_ref.sgmv_shrink(x, a, seg_starts, seg_slots, rk, v)


def _bgmv_shrink_fused(x, lora_as, indices, ranks_list, vs):
    for a, rk, v in zip(lora_as, ranks_list, vs, strict=True):
        torch_ref.bgmv_shrink(x, a, indices, rk, v)


def _sgmv_expand_fused(
    vs, lora_bs, seg_starts, seg_slots, ranks_list, y, y_offsets=None, max_seg_len=None
):
    offs = _offsets(lora_bs, y_offsets)
    for v, b, rk, off in zip(vs, lora_bs, ranks_list, offs, strict=True):
        torch_ref.sgmv_expand(v, b, seg_starts, seg_slots, rk, y, off)


def _bgmv_expand_fused(vs, lora_bs, indices, ranks_list, y, y_offsets=None):
    offs = _offsets(lora_bs, y_offsets)
    for v, b, rk, off in zip(vs, lora_bs, ranks_list, offs, strict=True):
        torch_ref.bgmv_expand(v, b, indices, rk, y, off)


def _drop_max_seg_len(fn):
    """The twins take no ``max_seg_len`` (they read segment bounds on the host anyway)."""

    def wrapped(*args, max_seg_len: int | None = None, **kwargs):
        return fn(*args, **kwargs)

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@cache
def _torch_ops() -> SimpleNamespace:
    return SimpleNamespace(
        backend="torch",
        sgmv_shrink=_drop_max_seg_len(torch_ref.sgmv_shrink),
        sgmv_expand=_drop_max_seg_len(torch_ref.sgmv_expand),
        bgmv_shrink=torch_ref.bgmv_shrink,
        bgmv_expand=torch_ref.bgmv_expand,
        sgmv_shrink_fused=_sgmv_shrink_fused,
        bgmv_shrink_fused=_bgmv_shrink_fused,
        sgmv_expand_fused=_sgmv_expand_fused,
        bgmv_expand_fused=_bgmv_expand_fused,
        sgmv_lora=lora_ops.combined(_sgmv_shrink_fused, _sgmv_expand_fused, "sgmv"),
        bgmv_lora=lora_ops.combined(_bgmv_shrink_fused, _bgmv_expand_fused, "bgmv"),
        bgmv_plan=lora_ops.no_plan,
        store_kv=torch_ref.store_kv,
        paged_decode_attention=torch_ref.paged_decode_attention,
        prefill_attention=torch_ref.prefill_attention,
        prefill_attention_paged=torch_ref.prefill_attention_paged,
    )


@cache
def _triton_ops() -> SimpleNamespace:
    from loraplex.kernels import flex_prefill, triton_attention, triton_lora  # lazy: triton

    lora = {name: getattr(triton_lora, name) for name in _OP_NAMES + _FUSED_NAMES}
    return SimpleNamespace(
        backend="triton",
        **lora,
        store_kv=triton_attention.store_kv,
        paged_decode_attention=triton_attention.paged_decode_attention,
        prefill_attention=flex_prefill.prefill_attention,
        prefill_attention_paged=flex_prefill.prefill_attention_paged,
    )


@cache
def _triton_ops_with(kernel: str) -> SimpleNamespace:
    """The Triton namespace with the LoRA names of ``kernel`` (v1 or v2)."""
    ns = SimpleNamespace(**vars(_triton_ops()))
    vars(ns).update(lora_ops.triton_lora_names(kernel), lora_kernel=kernel)
    return ns


def get_ops(device: torch.device | str, lora_kernel: str | None = None) -> SimpleNamespace:
    """Kernel namespace for ``device`` (``.backend`` is "triton" or "torch"); on Triton,
    ``lora_kernel`` (default ``LORAPLEX_LORA_KERNEL``) picks the LoRA kernels' generation."""
    if not use_triton(device):
        return _torch_ops()
    return _triton_ops_with(lora_ops.lora_kernel(lora_kernel))
