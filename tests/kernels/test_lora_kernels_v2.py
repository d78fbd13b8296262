"""v2 Triton LoRA kernels (rows grouped by adapter, split-K shrink) against the torch twins.

The same twin grid as the v1 tests (``lora_twin_cases``: dtype x rank 1..128 and mixed, adapters
x popularity x base rows, NaN past every real rank), run through the combined ops the engine calls
(``sgmv_lora`` / ``bgmv_lora``) with the fp32 split-K partials NaN-poisoned before every call, so
a partial the shrink did not write, or one the expand reads past the real rank, fails the test.
On CPU the kernels run interpreted with ``lora_tuning.INTERPRETER_CONFIG`` (split-K 2).
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

pytest.importorskip("triton")

from loraplex.kernels import lora_tuning  # noqa: E402
from loraplex.kernels import torch_ref as ref  # noqa: E402
from loraplex.kernels import triton_lora_v2 as v2  # noqa: E402
from loraplex.kernels.lora_tuning import ExpandConfig, LoraKernelConfig, ShrinkConfig  # noqa: E402
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


@pytest.fixture(autouse=True)
def poisoned_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_scratch(n, split, rows, rank, device):  # type: ignore[no-untyped-def]
        return torch.full((n, split, rows, rank), float("nan"), device=device)

    monkeypatch.setattr(v2, "new_scratch", nan_scratch)


def _twin_delta(x, lora_as, lora_bs, meta, ranks_list, y, offsets, kind: str) -> None:
    """What ``add_lora`` computed before v2: shrink into an fp32 v, then expand."""
    for a, b, rk, off in zip(lora_as, lora_bs, ranks_list, offsets, strict=True):
        v = torch.zeros(x.shape[0], a.shape[1], dtype=torch.float32, device=x.device)
        getattr(ref, f"{kind}_shrink")(x, a, *meta, rk, v)
        getattr(ref, f"{kind}_expand")(v, b, *meta, rk, y, off)


def _segments(case: Case, rng: random.Random) -> tuple[list[int], list[int]]:
    slots = request_slots(case, 8, rng)
    lens = [rng.randint(1, 12) for _ in slots]
    if case.seed % 3 == 0:
        lens[rng.randrange(len(lens))] = 37  # several row tiles in one segment
    return slots, lens


@pytest.mark.parametrize("kind", ("bgmv", "sgmv"))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_lora_matches_twins(case: Case, kind: str) -> None:
    rng, gen = random.Random(case.seed + 7), torch.Generator().manual_seed(case.seed + 7)
    h_in, h_out = rng.choice((32, 48, 80)), rng.choice((48, 80, 96))
    a, b, ranks, _ = make_weights(case, h_in, h_out, gen)
    rank_of = ranks.tolist()
    if kind == "bgmv":
        row_slots = request_slots(case, 16, rng)  # one row per request, unsorted
        meta = (torch.tensor(row_slots, device=DEV),)
        call = {}
    else:
        slots, lens = _segments(case, rng)
        row_slots = [s for s, n in zip(slots, lens, strict=True) for _ in range(n)]
        starts = [0, *itertools.accumulate(lens)]
        meta = (torch.tensor(starts, device=DEV), torch.tensor(slots, device=DEV))
        call = {"max_seg_len": None if case.seed % 4 == 0 else max(lens)}
    dtype, t = DTYPES[case.dtype], len(row_slots)
    x = torch.randn(t, h_in, generator=gen).to(DEV, dtype)
    off = rng.choice((0, 16))
    y0 = torch.randn(t, off + h_out + 8, generator=gen).to(DEV, dtype)
    y_ref, y_tri = y0.clone(), y0.clone()
    _twin_delta(x, [a], [b], meta, [ranks], y_ref, [off], kind)
    getattr(v2, f"{kind}_lora")(x, [a], [b], *meta, [ranks], y_tri, [off], **call)
    check_expand(y_tri, y_ref, y0, row_slots, rank_of, slice(off, off + h_out))


# Shrink and expand apart (v1's interface, one split written straight into v): a slice of the grid.
@pytest.mark.parametrize("case", CASES[::4], ids=lambda c: c.id)
def test_shrink_expand_apart_match_twins(case: Case) -> None:
    rng, gen = random.Random(case.seed + 3), torch.Generator().manual_seed(case.seed + 3)
    a, b, ranks, storage = make_weights(case, 48, 80, gen)
    row_slots = request_slots(case, 12, rng)
    idx = torch.tensor(row_slots, device=DEV)
    dtype = DTYPES[case.dtype]
    x = torch.randn(len(row_slots), 48, generator=gen).to(DEV, dtype)
    rank_of = ranks.tolist()
    v_ref = torch.full((len(row_slots), storage), float("nan"), device=DEV, dtype=dtype)
    v_tri = v_ref.clone()
    ref.bgmv_shrink(x, a, idx, ranks, v_ref)
    v2.bgmv_shrink(x, a, idx, ranks, v_tri)
    check_shrink(v_tri, v_ref, any(s >= 0 and rank_of[s] > 0 for s in row_slots))
    y0 = torch.randn(len(row_slots), 96, generator=gen).to(DEV, dtype)
    y_ref, y_tri = y0.clone(), y0.clone()
    ref.bgmv_expand(v_ref, b, idx, ranks, y_ref, 8)
    v2.bgmv_expand(v_ref, b, idx, ranks, y_tri, 8)
    check_expand(y_tri, y_ref, y0, row_slots, rank_of, slice(8, 88))


# (storage rank R_i, H_out_i) per slice, as in the v1 test: q/k/v-like, then a fourth slice that
# makes the wrapper split the slices over two launches.
SLICE_SPECS = ((16, 64), (64, 32), (8, 32), (32, 48))


@pytest.mark.parametrize(("n_slices", "kind"), list(itertools.product((2, 3, 4), ("sgmv", "bgmv"))))
def test_fused_slices_match_twins(n_slices: int, kind: str) -> None:
    seed = 11 * n_slices + len(kind)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    dtype, h_in, n_slots = list(DTYPES.values())[seed % 3], 48, 6
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
        meta = (torch.tensor([0, *itertools.accumulate(lens)]), torch.tensor(slots))
        t = sum(lens)
    else:
        meta, t = (torch.tensor(slots),), len(slots)
    meta = tuple(m.to(DEV) for m in meta)
    x = torch.randn(t, h_in, generator=gen).to(DEV, dtype)
    widths = [h for _, h in specs]
    offsets = [sum(widths[i + 1 :]) for i in range(n_slices)]  # reversed order: not back to back
    y0 = torch.randn(t, sum(widths) + 8, generator=gen).to(DEV, dtype)
    y_ref, y_tri = y0.clone(), y0.clone()
    _twin_delta(x, lora_as, lora_bs, meta, ranks_list, y_ref, offsets, kind)
    getattr(v2, f"{kind}_lora")(x, lora_as, lora_bs, *meta, ranks_list, y_tri, offsets)
    atol, rtol = TOL[dtype]
    assert bool(y_tri.isfinite().all())
    torch.testing.assert_close(y_tri, y_ref, atol=atol, rtol=rtol)
    assert torch.equal(y_tri[:, sum(widths) :], y0[:, sum(widths) :])


# Any tiling computes the same delta: one split, splits whose H_in range is empty (they must
# still write zeros), rank tiles wider than most ranks, several row tiles per group.
CONFIGS = {
    "split1": LoraKernelConfig(ShrinkConfig(16, 16, 32, 1), ExpandConfig(16, 32, 16)),
    "split4-empty": LoraKernelConfig(ShrinkConfig(16, 16, 32, 4), ExpandConfig(16, 64, 16)),
    "split3-r32": LoraKernelConfig(ShrinkConfig(32, 32, 16, 3), ExpandConfig(32, 16, 32)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_block_configs_agree(name: str) -> None:
    gen = torch.Generator().manual_seed(len(name))
    a = torch.randn(5, 40, 48, generator=gen) * 0.1
    b = torch.randn(5, 56, 40, generator=gen) * 0.1
    ranks = torch.tensor([40, 0, 3, 17, 33])
    for slot, r in enumerate(ranks.tolist()):
        a[slot, r:] = float("nan")
        b[slot, :, r:] = float("nan")
    idx = torch.tensor([3, 0, -1, 4, 0, 0, 2, 1, 3] * 5)  # slot 0 in 15 rows: row tiles loop
    x = torch.randn(idx.shape[0], 48, generator=gen)
    y0 = torch.randn(idx.shape[0], 60, generator=gen)
    y_ref, y_tri = y0.clone(), y0.clone()
    _twin_delta(x, [a], [b], (idx,), [ranks], y_ref, [2], "bgmv")
    v2.bgmv_lora(x, [a], [b], idx, [ranks], y_tri, [2], config=CONFIGS[name])
    torch.testing.assert_close(y_tri, y_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "slots",
    [[2, -1, 0, 2, 2, 1, -1, 0], [3] * 6, [-1, -1], [1], [4, 3, 2, 1, 0, -1]],
    ids=["mixed", "identical", "base", "one", "distinct"],
)
def test_plan_groups_rows_by_slot(slots: list[int]) -> None:
    plan = v2.bgmv_plan(torch.tensor(slots, dtype=torch.int32), num_slots=5)
    t = len(slots)
    assert plan.num_groups == min(t, 6) and plan.max_rows == t
    starts, got_slots, order = plan.starts.tolist(), plan.slots.tolist(), plan.order.tolist()
    assert sorted(order) == list(range(t)) and starts[0] == 0 and starts[-1] == t
    distinct = sorted(set(slots))
    for g in range(plan.num_groups):
        rows = order[starts[g] : starts[g + 1]]
        if g < len(distinct):  # one group per distinct slot, in slot order, rows in row order
            assert got_slots[g] == distinct[g]
            assert rows == [i for i, s in enumerate(slots) if s == distinct[g]]
        else:
            assert rows == []


def test_empty_batches_all_base_rows_and_strided_views() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, 16, 32, generator=gen).to(DEV)
    b = torch.randn(3, 40, 16, generator=gen).to(DEV)
    ranks = torch.tensor([4, 16, 9], device=DEV)
    empty = torch.zeros(0, dtype=torch.int64, device=DEV)
    x0, y0 = torch.zeros(0, 32, device=DEV), torch.zeros(0, 40, device=DEV)
    v2.bgmv_lora(x0, [a], [b], empty, [ranks], y0)
    v2.sgmv_lora(x0, [a], [b], torch.zeros(1, dtype=torch.int64, device=DEV), empty, [ranks], y0)

    big_x = torch.randn(9, 50, generator=gen).to(DEV)
    x = big_x[:, 7:39]  # stride(0) = 50
    y_big = torch.randn(9, 100, generator=gen).to(DEV)
    before = y_big.clone()
    base = torch.full((9,), -1, device=DEV)
    v2.bgmv_lora(x, [a], [b], base, [ranks], y_big[:, 10:70], [5])
    v2.sgmv_lora(x, [a], [b], torch.tensor([0, 4, 9]), torch.tensor([-1, -1]), [ranks], y_big)
    assert torch.equal(y_big, before)

    idx = torch.tensor([1, 0, 2, -1, 1, 1, 0, 2, 2], device=DEV)
    seg = (torch.tensor([0, 4, 9], device=DEV), torch.tensor([2, 1], device=DEV))
    for kind, meta in (("bgmv", (idx,)), ("sgmv", seg)):
        y_ref = y_big[:, 10:70].clone()
        _twin_delta(x, [a], [b], meta, [ranks], y_ref, [5], kind)
        view = y_big[:, 10:70]
        getattr(v2, f"{kind}_lora")(x, [a], [b], *meta, [ranks], view, [5])
        torch.testing.assert_close(y_big[:, 10:70], y_ref)


def _bad_calls():
    x, a, b, y = (
        torch.randn(4, 32),
        torch.randn(2, 16, 32),
        torch.randn(2, 48, 16),
        torch.zeros(4, 64),
    )
    rk, idx = torch.tensor([8, 16]), torch.tensor([0, 1, -1, 0])
    seg = (torch.tensor([0, 2, 4]), torch.tensor([0, 1]))
    return {
        "dtype mix": (lambda: v2.bgmv_lora(x.half(), [a], [b], idx, [rk], y), "dtype"),
        "B rank": (lambda: v2.bgmv_lora(x, [a], [b[:, :, :8]], idx, [rk], y), "lora_b"),
        "rows": (lambda: v2.bgmv_lora(x, [a], [b], idx, [rk], y[:3]), "rows"),
        "indices": (lambda: v2.bgmv_lora(x, [a], [b], idx[:3], [rk], y), "indices must have"),
        "y_offset": (lambda: v2.sgmv_lora(x, [a], [b], *seg, [rk], y, [20]), "out of range"),
        "slices": (lambda: v2.bgmv_lora(x, [a, a], [b], idx, [rk, rk], y), "differ in length"),
        "plan": (
            lambda: v2.bgmv_lora(x, [a], [b], idx, [rk], y, plan=v2.bgmv_plan(idx[:2], 2)),
            "plan",
        ),
    }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_wrapper_validation(name: str) -> None:
    call, match = _bad_calls()[name]
    with pytest.raises(ValueError, match=match):
        call()


def test_interpreter_uses_its_fixed_config() -> None:
    key = lora_tuning.ShapeKey("bgmv", 64, 4096, 4096, 3, "torch.bfloat16")
    assert lora_tuning.config_for(key) == lora_tuning.INTERPRETER_CONFIG
    gpu = lora_tuning.default_config(key)
    assert gpu.shrink.split_k == 8 and gpu.shrink.block_m == 64
