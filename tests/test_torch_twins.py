"""The torch twins (the CPU serving path) against a naive per-row reference, both code paths:
the loop over long segments and the padded batched matmul over many short ones."""

from __future__ import annotations

import pytest
import torch

from loraplex.kernels import torch_ref


def _naive(x, a, b, row_slots, ranks):
    y = torch.zeros(x.shape[0], b.shape[1], dtype=torch.float64)
    for i, slot in enumerate(row_slots):
        if slot >= 0 and ranks[slot] > 0:
            r = ranks[slot]
            y[i] = (x[i].double() @ a[slot, :r].double().T) @ b[slot, :, :r].double().T
    return y


@pytest.mark.parametrize(
    "lengths",
    [
        [2] * 32,  # decode over 32 adapters: batched
        [1, 3, 2, 5, 1, 4, 2, 2],  # uneven short segments: batched with padding
        [40, 3, 70],  # prefill-like: loop
        [1, 1, 30, 2, 1],  # mixed: a long one makes the rank group loop
    ],
)
@pytest.mark.parametrize("mixed_ranks", [False, True])
def test_segmented_twins_match_naive(lengths, mixed_ranks):
    g = torch.Generator().manual_seed(len(lengths))
    num_slots, max_rank, h_in, h_out = 40, 16, 24, 20
    ranks = [(4, 8, 16)[s % 3] if mixed_ranks else 8 for s in range(num_slots)]
    ranks[5] = 0  # a slot without this target
    a = torch.randn(num_slots, max_rank, h_in, generator=g)
    b = torch.randn(num_slots, h_out, max_rank, generator=g)
    slots = [(-1 if i == 1 else (i * 7) % num_slots) for i in range(len(lengths))]
    slots[-1] = 5
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    row_slots = [s for s, n in zip(slots, lengths, strict=True) for _ in range(n)]
    x = torch.randn(starts[-1], h_in, generator=g)
    v = torch.full((starts[-1], max_rank), float("nan"))
    y = torch.zeros(starts[-1], h_out + 6)
    seg = (torch.tensor(starts), torch.tensor(slots))
    rk = torch.tensor(ranks)
    torch_ref.sgmv_shrink(x, a, *seg, rk, v)
    torch_ref.sgmv_expand(v, b, *seg, rk, y, 3)
    expected = _naive(x, a, b, row_slots, ranks)
    torch.testing.assert_close(y[:, 3:-3].double(), expected, rtol=1e-4, atol=1e-4)
    assert (y[:, :3] == 0).all() and (y[:, -3:] == 0).all()
    untouched = [i for i, s in enumerate(row_slots) if s < 0 or ranks[s] == 0]
    assert torch.isnan(v[untouched]).all()  # base rows and rank-0 slots are never written
