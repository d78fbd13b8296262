"""Triton SGMV/BGMV LoRA kernels against their torch twins.

On CPU the kernels run under the Triton interpreter (see conftest.py), so shapes stay small.  The
case grid is a full product over the core axes (dtype x rank, mixed ranks included) with the other
axes rotated through deterministically, plus a full product over (adapters x popularity x base
rows) with dtype and rank drawn from a seeded sampler.

Storage padding beyond each slot's real rank is NaN-poisoned in the weights, and shrink outputs
start NaN-poisoned: a kernel that reads or writes past the real rank fails the comparison.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

pytest.importorskip("triton")

from loraplex.kernels import torch_ref as ref  # noqa: E402
from loraplex.kernels import triton_lora as tri  # noqa: E402
from tests.kernels.lora_twin_cases import (  # noqa: E402
    CASES,
    DEV,
    DTYPES,
    TOL,
    Case,
    check_expand,
    check_shrink,
    make_weights,
    request_slots,
)

# ---------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sgmv_matches_twin(case: Case) -> None:
    rng, gen = random.Random(case.seed), torch.Generator().manual_seed(case.seed)
    h_in, h_out = rng.choice((32, 48, 80)), rng.choice((48, 80, 96))
    a, b, ranks, storage = make_weights(case, h_in, h_out, gen)
    slots = request_slots(case, 8, rng)
    lens = [rng.randint(1, 12) for _ in slots]
    if case.seed % 3 == 0:
        lens[rng.randrange(len(lens))] = 37  # several row tiles in one segment
    starts = [0, *itertools.accumulate(lens)]
    t = starts[-1]
    seg_starts = torch.tensor(starts, device=DEV)
    seg_slots = torch.tensor(slots, device=DEV, dtype=torch.int32)
    # The engine passes the exact bound; the default (T) is exercised on a quarter of the cases.
    max_seg_len = None if case.seed % 4 == 0 else max(lens)
    dtype = DTYPES[case.dtype]
    x = torch.randn(t, h_in, generator=gen).to(DEV, dtype)
    rank_of = ranks.tolist()
    expect = any(s >= 0 and rank_of[s] > 0 for s in slots)

    v_ref = torch.full((t, storage), float("nan"), device=DEV, dtype=dtype)
    v_tri = v_ref.clone()
    ref.sgmv_shrink(x, a, seg_starts, seg_slots, ranks, v_ref)
    tri.sgmv_shrink(x, a, seg_starts, seg_slots, ranks, v_tri, max_seg_len=max_seg_len)
    check_shrink(v_tri, v_ref, expect)

    off = rng.choice((0, 16))
    y0 = torch.randn(t, off + h_out + 8, generator=gen).to(DEV, dtype)
    y_ref, y_tri = y0.clone(), y0.clone()
    ref.sgmv_expand(v_ref, b, seg_starts, seg_slots, ranks, y_ref, off)
    tri.sgmv_expand(v_ref, b, seg_starts, seg_slots, ranks, y_tri, off, max_seg_len=max_seg_len)
    row_slots = [s for s, n in zip(slots, lens, strict=True) for _ in range(n)]
    check_expand(y_tri, y_ref, y0, row_slots, rank_of, slice(off, off + h_out))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bgmv_matches_twin(case: Case) -> None:
    rng, gen = random.Random(case.seed + 1), torch.Generator().manual_seed(case.seed + 1)
    h_in, h_out = rng.choice((32, 48, 64)), rng.choice((48, 80, 96))
    a, b, ranks, storage = make_weights(case, h_in, h_out, gen)
    slots = request_slots(case, 16, rng)  # decode: one row per request, unsorted
    indices = torch.tensor(slots, device=DEV)
    dtype = DTYPES[case.dtype]
    x = torch.randn(len(slots), h_in, generator=gen).to(DEV, dtype)
    rank_of = ranks.tolist()
    expect = any(s >= 0 and rank_of[s] > 0 for s in slots)

    v_ref = torch.full((len(slots), storage), float("nan"), device=DEV, dtype=dtype)
    v_tri = v_ref.clone()
    ref.bgmv_shrink(x, a, indices, ranks, v_ref)
    tri.bgmv_shrink(x, a, indices, ranks, v_tri)
    check_shrink(v_tri, v_ref, expect)

    off = rng.choice((0, 16))
    y0 = torch.randn(len(slots), off + h_out + 8, generator=gen).to(DEV, dtype)
    y_ref, y_tri = y0.clone(), y0.clone()
    ref.bgmv_expand(v_ref, b, indices, ranks, y_ref, off)
    tri.bgmv_expand(v_ref, b, indices, ranks, y_tri, off)
    check_expand(y_tri, y_ref, y0, slots, rank_of, slice(off, off + h_out))


# ------------------------------------------------------------------------------ fused variants

# (storage rank R_i, H_out_i) per slice: q/k/v-like (GQA: k, v narrower), then a fourth slice to
# exercise the wrapper splitting more than three slices over launches.
SLICE_SPECS = ((16, 64), (64, 32), (8, 32), (32, 48))


@pytest.mark.parametrize("n_slices", (2, 3, 4))
@pytest.mark.parametrize("kind", ("sgmv", "bgmv"))
@pytest.mark.parametrize("dname", list(DTYPES))
def test_fused_matches_per_slice_twins(dname: str, kind: str, n_slices: int) -> None:
    seed = 7 * n_slices + len(kind) + len(dname) * 13
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    dtype, h_in, n_slots = DTYPES[dname], 48, 6
    specs = SLICE_SPECS[:n_slices]
    lora_as, lora_bs, ranks_list = [], [], []
    for r_store, h_out in specs:  # each projection has its own ranks (0 = slot lacks it)
        rk = [rng.choice((0, 1, r_store // 2, r_store)) for _ in range(n_slots)]
        rk[0] = r_store
        a = torch.randn(n_slots, r_store, h_in, generator=gen) * 0.1
        b = torch.randn(n_slots, h_out, r_store, generator=gen) * 0.1
        for slot, r in enumerate(rk):
            a[slot, r:] = float("nan")
            b[slot, :, r:] = float("nan")
        lora_as.append(a.to(DEV, dtype))
        lora_bs.append(b.to(DEV, dtype))
        ranks_list.append(torch.tensor(rk, device=DEV))
    slots = [rng.choice((-1, 0, 1, 2, 3, 4, 5)) for _ in range(7)]
    slots[0] = 0
    if kind == "sgmv":
        lens = [rng.randint(1, 9) for _ in slots]
        rows = [s for s, n in zip(slots, lens, strict=True) for _ in range(n)]
        seg_starts = torch.tensor([0, *itertools.accumulate(lens)], device=DEV)
        seg_slots = torch.tensor(slots, device=DEV)
        meta = (seg_starts, seg_slots)
    else:
        rows = slots
        meta = (torch.tensor(slots, device=DEV),)
    t = len(rows)
    x = torch.randn(t, h_in, generator=gen).to(DEV, dtype)
    shrink_ref, shrink_tri = getattr(ref, f"{kind}_shrink"), getattr(tri, f"{kind}_shrink_fused")
    expand_ref, expand_tri = getattr(ref, f"{kind}_expand"), getattr(tri, f"{kind}_expand_fused")

    vs_ref = [torch.full((t, r), float("nan"), device=DEV, dtype=dtype) for r, _ in specs]
    vs_tri = [v.clone() for v in vs_ref]
    for a, rk, v in zip(lora_as, ranks_list, vs_ref, strict=True):
        shrink_ref(x, a, *meta, rk, v)
    shrink_tri(x, lora_as, *meta, ranks_list, vs_tri)
    for v_tri, v_ref in zip(vs_tri, vs_ref, strict=True):
        check_shrink(v_tri, v_ref, expect_writes=True)

    widths = [h for _, h in specs]
    # Default offsets pack the slices back to back; custom ones here put them in reverse order.
    custom = rng.random() < 0.5
    offsets = [sum(widths[i + 1 :]) for i in range(n_slices)] if custom else None
    y0 = torch.randn(t, sum(widths) + 8, generator=gen).to(DEV, dtype)
    y_ref, y_tri = y0.clone(), y0.clone()
    offs = offsets or [sum(widths[:i]) for i in range(n_slices)]
    for v, b, rk, off in zip(vs_ref, lora_bs, ranks_list, offs, strict=True):
        expand_ref(v, b, *meta, rk, y_ref, off)
    expand_tri(vs_ref, lora_bs, *meta, ranks_list, y_tri, offsets)
    atol, rtol = TOL[dtype]
    assert bool(y_tri.isfinite().all())
    torch.testing.assert_close(y_tri, y_ref, atol=atol, rtol=rtol)
    assert torch.equal(y_tri[:, sum(widths) :], y0[:, sum(widths) :])


# ---------------------------------------------------------------------------------- edge cases


def test_empty_batches_and_all_base_rows() -> None:
    a = torch.randn(2, 16, 32, device=DEV)
    b = torch.randn(2, 48, 16, device=DEV)
    ranks = torch.tensor([8, 16], device=DEV)
    empty_i = torch.zeros(0, dtype=torch.int64, device=DEV)
    x0, v0, y0 = (torch.zeros(0, n, device=DEV) for n in (32, 16, 48))
    tri.bgmv_shrink(x0, a, empty_i, ranks, v0)
    tri.bgmv_expand(v0, b, empty_i, ranks, y0)
    tri.sgmv_shrink(x0, a, torch.zeros(1, dtype=torch.int64, device=DEV), empty_i, ranks, v0)
    tri.sgmv_expand(v0, b, torch.zeros(1, dtype=torch.int64, device=DEV), empty_i, ranks, y0)

    x = torch.randn(5, 32, device=DEV)
    v = torch.full((5, 16), float("nan"), device=DEV)
    y = torch.randn(5, 48, device=DEV)
    y_before = y.clone()
    base = torch.full((5,), -1, device=DEV)
    tri.bgmv_shrink(x, a, base, ranks, v)
    tri.bgmv_expand(v, b, base, ranks, y)
    seg = (torch.tensor([0, 2, 5], device=DEV), torch.tensor([-1, -1], device=DEV))
    tri.sgmv_shrink(x, a, *seg, ranks, v)
    tri.sgmv_expand(v, b, *seg, ranks, y)
    assert bool(v.isnan().all()) and torch.equal(y, y_before)


def test_strided_row_views() -> None:
    """Inputs/outputs may be row-strided views (e.g. a column slice of a fused qkv buffer)."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(3, 16, 32, generator=gen).to(DEV)
    b = torch.randn(3, 40, 16, generator=gen).to(DEV)
    ranks = torch.tensor([4, 16, 9], device=DEV)
    big_x = torch.randn(9, 50, generator=gen).to(DEV)
    x = big_x[:, 7:39]  # stride(0) = 50
    seg = (torch.tensor([0, 4, 9], device=DEV), torch.tensor([2, 1], device=DEV))
    idx = torch.tensor([1, 0, 2, -1, 1, 1, 0, 2, 2], device=DEV)
    for name, meta in (("sgmv", seg), ("bgmv", (idx,))):
        v_ref = torch.zeros(9, 16, device=DEV)
        v_tri = torch.zeros(9, 40, device=DEV)[:, 3:19]
        getattr(ref, f"{name}_shrink")(x, a, *meta, ranks, v_ref)
        getattr(tri, f"{name}_shrink")(x, a, *meta, ranks, v_tri)
        torch.testing.assert_close(v_tri, v_ref)
        y_big = torch.randn(9, 100, generator=gen).to(DEV)
        y_ref = y_big[:, 10:70].clone()
        getattr(ref, f"{name}_expand")(v_ref, b, *meta, ranks, y_ref, 5)
        getattr(tri, f"{name}_expand")(v_ref, b, *meta, ranks, y_big[:, 10:70], 5)
        torch.testing.assert_close(y_big[:, 10:70], y_ref)


def _bad_calls():
    x, a, v = torch.randn(4, 32), torch.randn(2, 16, 32), torch.zeros(4, 16)
    b, y = torch.randn(2, 48, 16), torch.zeros(4, 64)
    rk, idx = torch.tensor([8, 16]), torch.tensor([0, 1, -1, 0])
    ss, sl = torch.tensor([0, 2, 4]), torch.tensor([0, 1])
    return {
        "int x": (lambda: tri.bgmv_shrink(x.long(), a, idx, rk, v), "x must be float32"),
        "dtype mix": (lambda: tri.bgmv_shrink(x.half(), a, idx, rk, v), "dtype"),
        "H_in": (lambda: tri.bgmv_shrink(x[:, :24].contiguous(), a, idx, rk, v), "H_in"),
        "v shape": (
            lambda: tri.sgmv_shrink(x, a, ss, sl, rk, v[:, :8]),
            r"v\[0\] must be \[T, R\]",
        ),
        "2-D A": (lambda: tri.bgmv_shrink(x, a[0], idx, rk, v), "must be 3-D"),
        "float ranks": (lambda: tri.bgmv_shrink(x, a, idx, rk.float(), v), "int32/int64"),
        "ranks len": (lambda: tri.bgmv_shrink(x, a, idx, rk[:1], v), "must have 2 entries"),
        "indices len": (lambda: tri.bgmv_expand(v, b, idx[:3], rk, y), "indices must have 4"),
        "seg_slots len": (lambda: tri.sgmv_expand(v, b, ss, sl[:1], rk, y), "seg_slots must have"),
        "last dim": (lambda: tri.bgmv_expand(v, b, idx, rk, y.t().contiguous().t()), "contiguous"),
        "y_offset": (lambda: tri.bgmv_expand(v, b, idx, rk, y, 20), "out of range"),
        "slices": (lambda: tri.bgmv_shrink_fused(x, [a, a], idx, [rk], [v, v]), "differ in length"),
        "offsets": (
            lambda: tri.sgmv_expand_fused([v], [b], ss, sl, [rk], y, [0, 8]),
            "need 1 y_offsets",
        ),
    }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_wrapper_validation(name: str) -> None:
    call, match = _bad_calls()[name]
    with pytest.raises(ValueError, match=match):
        call()


def test_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    from loraplex.kernels import dispatch

    names = (
        "sgmv_shrink", "sgmv_expand", "bgmv_shrink", "bgmv_expand", "sgmv_shrink_fused",
        "sgmv_expand_fused", "bgmv_shrink_fused", "bgmv_expand_fused", "store_kv",
        "paged_decode_attention", "prefill_attention",
    )  # fmt: skip
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("LORAPLEX_TRITON_ON_CPU", raising=False)
    monkeypatch.delenv("LORAPLEX_DISABLE_TRITON", raising=False)
    assert not dispatch.use_triton(torch.device("cpu"))
    assert dispatch.get_ops("cpu").backend == "torch"
    monkeypatch.setenv("LORAPLEX_TRITON_ON_CPU", "1")
    assert dispatch.use_triton(torch.device("cpu"))
    ops = dispatch.get_ops("cpu")
    assert ops.backend == "triton" and ops.bgmv_shrink is tri.bgmv_shrink
    assert dispatch.use_triton(torch.device("cuda"))
    monkeypatch.setenv("LORAPLEX_DISABLE_TRITON", "1")
    assert not dispatch.use_triton(torch.device("cuda"))
    torch_ops = dispatch.get_ops("cpu")
    for ns in (ops, torch_ops):
        assert all(callable(getattr(ns, n)) for n in names)

    # The torch fused fallbacks and the twins' max_seg_len shim behave like the Triton ones.
    gen = torch.Generator().manual_seed(0)
    x, a = torch.randn(5, 32, generator=gen), torch.randn(2, 16, 32, generator=gen)
    rk, seg = torch.tensor([8, 16]), (torch.tensor([0, 2, 5]), torch.tensor([1, 0]))
    v1, v2 = torch.zeros(5, 16), torch.zeros(5, 16)
    torch_ops.sgmv_shrink_fused(x, [a], *seg, [rk], [v1], max_seg_len=3)
    torch_ops.sgmv_shrink(x, a, *seg, rk, v2, max_seg_len=3)
    assert torch.equal(v1, v2) and v1.abs().sum() > 0
