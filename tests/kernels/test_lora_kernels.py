"""Triton SGMV/BGMV LoRA kernels against their torch twins.

On CPU the kernels run under the Triton interpreter (see conftest.py), so shapes stay small.  The
case grid is a full product over the core axes (dtype x rank x number of adapters) with popularity
and base rows rotated through deterministically, plus a full product over (adapters x popularity x
base rows) with dtype and rank drawn from a seeded sampler.

Storage padding beyond each slot's real rank is NaN-poisoned in the weights, and shrink outputs
start NaN-poisoned: a kernel that reads or writes past the real rank fails the comparison.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from loraplex.kernels import torch_ref as ref  # noqa: E402
from loraplex.kernels import triton_lora as tri  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 2e-2)}
RANKS = (1, 8, 16, 64, 128, "mixed")
MIXED_RANKS = (1, 8, 16, 64, 128)
N_ADAPTERS = (1, 4, 32)
POPULARITY = ("distinct", "uniform", "zipf1.5", "identical")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Case:
    dtype: str
    rank: int | str
    n_adapters: int
    popularity: str
    base_rows: bool

    @property
    def id(self) -> str:
        base = "base" if self.base_rows else "nobase"
        return f"{self.dtype}-r{self.rank}-a{self.n_adapters}-{self.popularity}-{base}"

    @property
    def seed(self) -> int:
        return sum(ord(c) * (i + 1) for i, c in enumerate(self.id))


def _cases() -> list[Case]:
    rng = random.Random(1234)
    secondary = list(itertools.product(POPULARITY, (False, True)))
    cases = {}
    for i, (d, r, a) in enumerate(itertools.product(DTYPES, RANKS, N_ADAPTERS)):
        p, b = secondary[(i + i // len(secondary)) % len(secondary)]
        cases[Case(d, r, a, p, b).id] = Case(d, r, a, p, b)
    for a, p, b in itertools.product(N_ADAPTERS, POPULARITY, (False, True)):
        c = Case(rng.choice(list(DTYPES)), rng.choice(RANKS), a, p, b)
        cases[c.id] = c
    return list(cases.values())


CASES = _cases()


# ------------------------------------------------------------------------------------- builders


def _layout(case: Case) -> tuple[list[int], int, list[int], int]:
    """Per-slot ranks (one spare rank-0 slot), storage rank R, adapter->slot map, spare slot."""
    rng = random.Random(case.seed)
    n = case.n_adapters
    if case.rank == "mixed":
        adapter_ranks = [MIXED_RANKS[(i + rng.randrange(5)) % 5] for i in range(n)]
    else:
        adapter_ranks = [int(case.rank)] * n
    perm = list(range(n + 1))
    rng.shuffle(perm)
    ranks = [0] * (n + 1)
    for j, slot in enumerate(perm[:n]):
        ranks[slot] = adapter_ranks[j]
    # Storage padded past the largest real rank half of the time.
    storage = 128 if rng.random() < 0.5 else max(max(ranks), 1)
    return ranks, storage, perm[:n], perm[n]


def _request_slots(case: Case, n_req: int, rng: random.Random) -> list[int]:
    _, _, slot_of, spare = _layout(case)
    n = case.n_adapters
    if case.popularity == "distinct":
        ids = [i % n for i in range(n_req)]
        rng.shuffle(ids)
    elif case.popularity == "uniform":
        ids = [rng.randrange(n) for _ in range(n_req)]
    elif case.popularity == "zipf1.5":
        ids = rng.choices(range(n), weights=[(k + 1) ** -1.5 for k in range(n)], k=n_req)
    else:
        ids = [rng.randrange(n)] * n_req
    slots = [slot_of[i] for i in ids]
    if case.base_rows:  # a third of the requests on the base model, one on a rank-0 slot
        picks = rng.sample(range(n_req), max(2, n_req // 3))
        for p in picks[1:]:
            slots[p] = -1
        slots[picks[0]] = spare
    return slots


def _weights(case: Case, h_in: int, h_out: int, gen: torch.Generator):
    ranks, storage, _, _ = _layout(case)
    dtype = DTYPES[case.dtype]
    s = len(ranks)
    a = torch.randn(s, storage, h_in, generator=gen) * 0.1
    b = torch.randn(s, h_out, storage, generator=gen) * 0.1
    for slot, r in enumerate(ranks):  # padding past the real rank must never be read
        a[slot, r:] = float("nan")
        b[slot, :, r:] = float("nan")
    rk = torch.tensor(ranks, dtype=torch.int32 if case.seed % 2 else torch.int64)
    return a.to(DEV, dtype), b.to(DEV, dtype), rk.to(DEV), storage


def _check_shrink(v_tri: torch.Tensor, v_ref: torch.Tensor, expect_writes: bool) -> None:
    atol, rtol = TOL[v_ref.dtype]
    written = ~v_ref.isnan()
    assert torch.equal(v_tri.isnan(), v_ref.isnan()), "written region differs (or non-finite)"
    assert bool(written.any()) == expect_writes
    torch.testing.assert_close(v_tri[written], v_ref[written], atol=atol, rtol=rtol)


def _check_expand(y_tri: torch.Tensor, y_ref: torch.Tensor, y0: torch.Tensor) -> None:
    atol, rtol = TOL[y_ref.dtype]
    assert bool(y_tri.isfinite().all())
    torch.testing.assert_close(y_tri, y_ref, atol=atol, rtol=rtol)
    untouched = y_ref == y0  # rows/columns the twin left alone must be bit-identical
    assert torch.equal(y_tri[untouched], y0[untouched])


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sgmv_matches_twin(case: Case) -> None:
    rng, gen = random.Random(case.seed), torch.Generator().manual_seed(case.seed)
    h_in, h_out = rng.choice((32, 48, 80)), rng.choice((48, 80, 96))
    a, b, ranks, storage = _weights(case, h_in, h_out, gen)
    slots = _request_slots(case, 8, rng)
    lens = [rng.randint(1, 12) for _ in slots]
    if case.seed % 3 == 0:
        lens[rng.randrange(len(lens))] = 37  # several row tiles in one segment
    starts = [0, *itertools.accumulate(lens)]
    t = starts[-1]
    seg_starts = torch.tensor(starts, device=DEV)
    seg_slots = torch.tensor(slots, device=DEV, dtype=torch.int32)
    max_seg_len = max(lens) if case.seed % 2 else None
    dtype = DTYPES[case.dtype]
    x = torch.randn(t, h_in, generator=gen).to(DEV, dtype)
    rank_of = ranks.tolist()
    expect = any(s >= 0 and rank_of[s] > 0 for s in slots)

    v_ref = torch.full((t, storage), float("nan"), device=DEV, dtype=dtype)
    v_tri = v_ref.clone()
    ref.sgmv_shrink(x, a, seg_starts, seg_slots, ranks, v_ref)
    tri.sgmv_shrink(x, a, seg_starts, seg_slots, ranks, v_tri, max_seg_len=max_seg_len)
    _check_shrink(v_tri, v_ref, expect)

    off = rng.choice((0, 16))
    y0 = torch.randn(t, off + h_out + 8, generator=gen).to(DEV, dtype)
    y_ref, y_tri = y0.clone(), y0.clone()
    ref.sgmv_expand(v_ref, b, seg_starts, seg_slots, ranks, y_ref, off)
    tri.sgmv_expand(v_ref, b, seg_starts, seg_slots, ranks, y_tri, off, max_seg_len=max_seg_len)
    _check_expand(y_tri, y_ref, y0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bgmv_matches_twin(case: Case) -> None:
    rng, gen = random.Random(case.seed + 1), torch.Generator().manual_seed(case.seed + 1)
    h_in, h_out = rng.choice((32, 48, 64)), rng.choice((48, 80, 96))
    a, b, ranks, storage = _weights(case, h_in, h_out, gen)
    slots = _request_slots(case, 16, rng)  # decode: one row per request, unsorted
    indices = torch.tensor(slots, device=DEV)
    dtype = DTYPES[case.dtype]
    x = torch.randn(len(slots), h_in, generator=gen).to(DEV, dtype)
    rank_of = ranks.tolist()
    expect = any(s >= 0 and rank_of[s] > 0 for s in slots)

    v_ref = torch.full((len(slots), storage), float("nan"), device=DEV, dtype=dtype)
    v_tri = v_ref.clone()
    ref.bgmv_shrink(x, a, indices, ranks, v_ref)
    tri.bgmv_shrink(x, a, indices, ranks, v_tri)
    _check_shrink(v_tri, v_ref, expect)

    off = rng.choice((0, 16))
    y0 = torch.randn(len(slots), off + h_out + 8, generator=gen).to(DEV, dtype)
    y_ref, y_tri = y0.clone(), y0.clone()
    ref.bgmv_expand(v_ref, b, indices, ranks, y_ref, off)
    tri.bgmv_expand(v_ref, b, indices, ranks, y_tri, off)
    _check_expand(y_tri, y_ref, y0)
