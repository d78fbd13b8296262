"""Prefill attention on CUDA: the whole packed batch in one FlexAttention launch.

Same signatures and semantics as ``torch_ref.prefill_attention`` (fresh prompts) and
``torch_ref.prefill_attention_paged`` (chunked prefill, prefix-cache hits), which stay the CPU
path and the fallback.  Measured on an H200 (8 x 512 tokens, 32 heads of 128, bf16): the
twin's per-sequence SDPA took 2168 µs, compiled FlexAttention with a document mask 104 µs
(``docs/benchmarks.md``).

* Fresh prompts attend over this step's K/V; prompts with cached tokens attend over their whole
  context, gathered from the paged cache (the new tokens' K/V are stored before attention), in
  groups of at most ``MAX_GATHER_TOKENS`` context tokens so a batch of long cached prefixes
  does not allocate unbounded K/V copies.
* The block mask (``flex_plan``) depends on the step's lengths only: it is built once per step
  and reused by every layer.
* Values are copied with NaN/inf set to 0: FlexAttention multiplies a masked-out key's value
  by 0, so a non-finite value from one prompt would otherwise turn a neighbour's output NaN
  where their keys share a 128-row block.  One tenant's overflow stays its own.
* Unsupported inputs (CPU tensors, head dims that are not a power of two in 16..256, other
  dtypes) or a failed compile fall back to the twins, with one log line per reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import torch

from loraplex.kernels import flex_plan, torch_ref

log = logging.getLogger(__name__)

MAX_GATHER_TOKENS = 65536  # context tokens gathered from the cache per launch
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NOT_CUDA = "not on CUDA"  # the CPU path by design: no log line
_warned: set[str] = set()
_failed: list[str] = []  # set once a compiled call raised: the twins serve from then on


@cache
def _flex_attention() -> Callable[..., torch.Tensor] | None:
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return flex_attention


@cache
def compiled_flex() -> Callable[..., torch.Tensor]:
    """``flex_attention`` under ``torch.compile`` (the fused kernel; eager flex materializes
    every score).  Compiled once per process; shapes that change become dynamic after the
    first recompile, which the start-up warm-up (``engine/warmup.py``) triggers."""
    fn = _flex_attention()
    assert fn is not None
    # Each dtype, GQA setting and fresh/paged layout is its own graph.  Past dynamo's limit (8)
    # it would silently run flex eagerly, materializing every score: leave room.
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
    return torch.compile(fn)


def unsupported(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """Why the FlexAttention path cannot take these inputs, or None."""
    return unsupported_reason(q.is_cuda, q.dtype, k.dtype, q.shape[-1])


def unsupported_reason(
    on_cuda: bool, dtype: torch.dtype, kv_dtype: torch.dtype, head_dim: int
) -> str | None:
    if not on_cuda:
        return _NOT_CUDA
    if _flex_attention() is None:
        return f"torch {torch.__version__} has no FlexAttention"
    if _failed:
        return _failed[0]
    if dtype not in _DTYPES or kv_dtype != dtype:
        return f"dtype {dtype}/{kv_dtype}"
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        return f"head dim {head_dim} (needs a power of two in 16..256)"
    return None


def _fallback(reason: str) -> None:
    if reason != _NOT_CUDA and reason not in _warned:
        _warned.add(reason)
        log.warning("prefill attention: FlexAttention unavailable (%s); per-sequence SDPA", reason)


@dataclass(frozen=True)
class _Group:
    """One launch: prompts ``first .. last - 1`` of the step."""

    first: int
    last: int
    bounds: flex_plan.RowBounds
    mask: object  # BlockMask
    gather: torch.Tensor | None  # [kv_len] flat cache slots of the context (paged), or None


# Every layer of a step passes the same metadata objects: plan once per step, keyed by identity
# (an entry holds its keys, so their ids are not reused while it is kept).
_plans: list[tuple[tuple, list[_Group]]] = []
_PLANS_KEPT = 4


def _plan(
    cu: list[int],
    prefix_lens: list[int] | None,
    block_tables: torch.Tensor | None,
    block_size: int,
    window: int | None,
    device: torch.device,
    block: int,
) -> list[_Group]:
    key = (cu, prefix_lens, block_tables, block_size, window, device, block)
    for k, groups in _plans:
        if all(a is b for a, b in zip(k[:3], key[:3], strict=True)) and k[3:] == key[3:]:
            return groups
    groups = _make_groups(cu, prefix_lens, block_tables, block_size, window, device, block)
    _plans.append((key, groups))
    del _plans[:-_PLANS_KEPT]
    return groups


def _make_groups(cu, prefix_lens, block_tables, block_size, window, device, block):  # type: ignore[no-untyped-def]
    n = len(cu) - 1
    if prefix_lens is None:
        b = flex_plan.row_bounds(cu, None, window, block)
        return [_Group(0, n, b, flex_plan.block_mask(b, device, block), None)]
    groups, first, ctx_sum = [], 0, 0
    for i in range(n + 1):
        ctx = prefix_lens[i] + cu[i + 1] - cu[i] if i < n else 0
        if i == n or (i > first and ctx_sum + ctx > MAX_GATHER_TOKENS):
            sub_cu = [c - cu[first] for c in cu[first : i + 1]]
            b = flex_plan.row_bounds(sub_cu, prefix_lens[first:i], window, block)
            slots = _context_slots(block_tables[first:i], prefix_lens[first:i], sub_cu, block_size)
            mask = flex_plan.block_mask(b, device, block)
            groups.append(_Group(first, i, b, mask, slots.to(device)))
            first, ctx_sum = i, 0
        ctx_sum += ctx
    return groups


def _context_slots(
    tables: torch.Tensor, prefix_lens: Sequence[int], cu: Sequence[int], block_size: int
) -> torch.Tensor:
    """Flat cache slot of every context token (prefix + new) of each prompt, back to back."""
    ctx = [p + cu[i + 1] - cu[i] for i, p in enumerate(prefix_lens)]
    doc = torch.repeat_interleave(torch.arange(len(ctx)), torch.tensor(ctx))
    pos = torch.arange(sum(ctx)) - torch.tensor([0, *ctx[:-1]]).cumsum(0)[doc]
    blocks = tables.cpu().long()[doc, pos // block_size]
    return blocks * block_size + pos % block_size


def _rows(x: torch.Tensor, n: int, finite: bool = False) -> torch.Tensor:
    """[L, heads, D] -> [n, heads, D] with zero rows appended (a view when L == n); with
    ``finite`` always a copy, whose NaN/inf are 0."""
    if x.shape[0] == n and not finite:
        return x
    out = x.new_zeros(n, *x.shape[1:])
    out[: x.shape[0]] = x
    return out.nan_to_num_(0.0, 0.0, 0.0) if finite else out


def _gathered(cache: torch.Tensor, slots: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``slots`` of a paged cache [blocks, block_size, KVH, D] as [n, KVH, D], zero-padded."""
    flat = cache.view(-1, *cache.shape[2:])
    out = flat.new_zeros(n, *flat.shape[1:])
    torch.index_select(flat, 0, slots, out=out[: slots.shape[0]])
    return out if out.dtype == dtype else out.to(dtype)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: _Group,
    scale: float,
    flex: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """q: [q_len, H, D]; k, v: [kv_pad, KVH, D], zero-padded, v finite -> [q_len, H, D]."""
    b = g.bounds
    out = flex(
        _rows(q, b.lo.shape[0]).transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        block_mask=g.mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)[: b.q_len]


def flex_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: list[int],
    scale: float,
    sliding_window: int | None = None,
    *,
    compiled: bool = True,
    block: int = flex_plan.BLOCK,
) -> torch.Tensor:
    """FlexAttention over fresh prompts (no fallback).  ``compiled=False`` runs eager flex (slow,
    every score materialized; for CPU tests)."""
    flex = compiled_flex() if compiled else _flex_attention()
    assert flex is not None
    (g,) = _plan(cu_seqlens, None, None, 0, sliding_window, q.device, block)
    pad = g.bounds.kv_pad
    return _attend(q, _rows(k, pad), _rows(v, pad, finite=True), g, scale, flex)


def flex_prefill_paged(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens: list[int],
    prefix_lens: list[int],
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    *,
    compiled: bool = True,
    block: int = flex_plan.BLOCK,
) -> torch.Tensor:
    """FlexAttention of new tokens over their cached prefix and themselves, read from the cache
    (no fallback).  One launch per group of at most ``MAX_GATHER_TOKENS`` context tokens."""
    flex = compiled_flex() if compiled else _flex_attention()
    assert flex is not None
    bs = k_cache.shape[1]
    groups = _plan(cu_seqlens, prefix_lens, block_tables, bs, sliding_window, q.device, block)
    outs = []
    for g in groups:
        assert g.gather is not None
        ks = _gathered(k_cache, g.gather, g.bounds.kv_pad, q.dtype)
        vs = _gathered(v_cache, g.gather, g.bounds.kv_pad, q.dtype).nan_to_num_(0.0, 0.0, 0.0)
        rows = slice(cu_seqlens[g.first], cu_seqlens[g.last])
        outs.append(_attend(q[rows], ks, vs, g, scale, flex))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _run(fast: Callable[[], torch.Tensor], slow: Callable[[], torch.Tensor]) -> torch.Tensor:
    try:
        return fast()
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # a compile or lowering failure: serve on with the twins
        reason = f"compiled FlexAttention failed: {type(e).__name__}: {str(e)[:200]}"
        _failed.append(reason)
        _fallback(reason)
        return slow()


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: list[int],
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """``torch_ref.prefill_attention`` through one FlexAttention launch where supported."""
    slow = lambda: torch_ref.prefill_attention(q, k, v, cu_seqlens, scale, sliding_window)  # noqa: E731
    if (reason := unsupported(q, k)) is not None:
        _fallback(reason)
        return slow()
    return _run(lambda: flex_prefill(q, k, v, cu_seqlens, scale, sliding_window), slow)


def prefill_attention_paged(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens: list[int],
    prefix_lens: list[int],
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """``torch_ref.prefill_attention_paged`` through FlexAttention where supported."""
    args = (cu_seqlens, prefix_lens, block_tables, scale, sliding_window)
    slow = lambda: torch_ref.prefill_attention_paged(q, k, v, k_cache, v_cache, *args)  # noqa: E731
    if (reason := unsupported(q, k_cache)) is not None:
        _fallback(reason)
        return slow()
    return _run(lambda: flex_prefill_paged(q, k_cache, v_cache, *args), slow)
