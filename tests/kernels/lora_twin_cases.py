"""The twin-grid cases shared by the LoRA kernel tests (v1: test_lora_kernels.py, v2:
test_lora_kernels_v2.py): the case grid, slot layouts, request popularity, NaN-poisoned weights
and the comparisons against the torch twins."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch

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


def all_cases() -> list[Case]:
    """Full dtype x rank product (secondary axes rotated through all 24 of their combinations),
    then the full adapters x popularity x base-rows product (dtype and rank sampled)."""
    rng = random.Random(1234)
    secondary = list(itertools.product(N_ADAPTERS, POPULARITY, (False, True)))
    rng.shuffle(secondary)
    cases = {}
    for i, (d, r) in enumerate(itertools.product(DTYPES, RANKS)):
        c = Case(d, r, *secondary[i % len(secondary)])
        cases[c.id] = c
    for a, p, b in itertools.product(N_ADAPTERS, POPULARITY, (False, True)):
        c = Case(rng.choice(list(DTYPES)), rng.choice(RANKS), a, p, b)
        cases[c.id] = c
    return list(cases.values())


CASES = all_cases()


# ------------------------------------------------------------------------------------- builders


def layout(case: Case) -> tuple[list[int], int, list[int], int]:
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


def request_slots(case: Case, n_req: int, rng: random.Random) -> list[int]:
    _, _, slot_of, spare = layout(case)
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


def make_weights(case: Case, h_in: int, h_out: int, gen: torch.Generator):
    ranks, storage, _, _ = layout(case)
    dtype = DTYPES[case.dtype]
    s = len(ranks)
    a = torch.randn(s, storage, h_in, generator=gen) * 0.1
    b = torch.randn(s, h_out, storage, generator=gen) * 0.1
    for slot, r in enumerate(ranks):  # padding past the real rank must never be read
        a[slot, r:] = float("nan")
        b[slot, :, r:] = float("nan")
    rk = torch.tensor(ranks, dtype=torch.int32 if case.seed % 2 else torch.int64)
    return a.to(DEV, dtype), b.to(DEV, dtype), rk.to(DEV), storage


def check_shrink(v_tri: torch.Tensor, v_ref: torch.Tensor, expect_writes: bool) -> None:
    atol, rtol = TOL[v_ref.dtype]
    written = ~v_ref.isnan()
    assert torch.equal(v_tri.isnan(), v_ref.isnan()), "written region differs (or non-finite)"
    assert bool(written.any()) == expect_writes
    torch.testing.assert_close(v_tri[written], v_ref[written], atol=atol, rtol=rtol)


def check_expand(
    y_tri: torch.Tensor, y_ref: torch.Tensor, y0: torch.Tensor, row_slots: list[int],
    ranks: list[int], cols: slice,
) -> None:  # fmt: skip
    atol, rtol = TOL[y_ref.dtype]
    assert bool(y_tri.isfinite().all())
    torch.testing.assert_close(y_tri, y_ref, atol=atol, rtol=rtol)
    # Base rows, rank-0 rows and columns outside the slice must be left bit-identical.
    untouched = torch.ones_like(y0, dtype=torch.bool)
    for row, slot in enumerate(row_slots):
        if slot >= 0 and ranks[slot] > 0:
            untouched[row, cols] = False
    assert torch.equal(y_tri[untouched], y0[untouched])
