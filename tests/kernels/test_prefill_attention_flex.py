"""The one-launch prefill attention (FlexAttention, ``flex_prefill``) against the per-prompt twins.

On CPU FlexAttention runs eagerly, which evaluates the mask on every element and ignores the
block structure; ``effective_mask`` checks that structure on its own (what the compiled kernel
reads), so the two halves together cover what a GPU runs.  The GPU half is in
``test_prefill_attention_flex_gpu.py``.
"""

from __future__ import annotations

import itertools
import logging
import warnings

import pytest
import torch

from loraplex.kernels import flex_plan, flex_prefill, torch_ref
from loraplex.kernels.dispatch import _triton_ops

pytest.importorskip("torch.nn.attention.flex_attention")

# Eager FlexAttention warns that it is unfused on every first call: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-2, 2e-2)}
# (cached prefix, new tokens) per prompt: none, inside a block, a 1-token chunk, long.
SEQS = [(0, 5), (5, 7), (17, 1), (3, 40)]


def _cu(lens) -> list[int]:  # type: ignore[no-untyped-def]
    return [0, *itertools.accumulate(lens)]


def _fresh(lens, heads: int, kvh: int, d: int, dtype, seed: int):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    t = sum(lens)
    q, k, v = (torch.randn(t, n, d, generator=gen).to(dtype) for n in (heads, kvh, kvh))
    return q, k, v, _cu(lens)


def _paged(seqs, block_size: int, kvh: int, heads: int, d: int, dtype, seed: int):  # type: ignore[no-untyped-def]
    """A cache holding each prompt's prefix + new K/V at scattered blocks, NaN elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    width = max(-(-(p + n) // block_size) for p, n in seqs) + 1
    num_blocks = len(seqs) * width + 2
    k_cache = torch.full((num_blocks, block_size, kvh, d), float("nan"))
    v_cache = k_cache.clone()
    tables = torch.randperm(num_blocks, generator=gen)[: len(seqs) * width].view(len(seqs), -1)
    q, k, v = [], [], []
    for row, (p, n) in enumerate(seqs):
        pos = torch.arange(p + n)
        slots = tables[row][pos // block_size] * block_size + pos % block_size
        kk, vv = torch.randn(2, p + n, kvh, d, generator=gen)
        k_cache.view(-1, kvh, d)[slots], v_cache.view(-1, kvh, d)[slots] = kk, vv
        q.append(torch.randn(n, heads, d, generator=gen))
        k.append(kk[p:])
        v.append(vv[p:])
    to = lambda x: x.to(dtype)  # noqa: E731
    return (
        to(torch.cat(q)), to(torch.cat(k)), to(torch.cat(v)), to(k_cache), to(v_cache),
        _cu(n for _, n in seqs), [p for p, _ in seqs], tables.to(torch.int32),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("dtype", "groups", "window"),
    list(itertools.product((torch.float32, torch.bfloat16), (1, 2), (None, 3, 20))),
)
def test_fresh_prompts_match_twin(dtype, groups: int, window) -> None:
    """Mixed lengths (a 1-token prompt, prompts across 16-row blocks), GQA, sliding windows."""
    q, k, v, cu = _fresh([5, 1, 37, 20], 4, 4 // groups, 16, dtype, seed=groups)
    out = flex_prefill.flex_prefill(q, k, v, cu, 0.3, window, compiled=False, block=16)
    expect = torch_ref.prefill_attention(q, k, v, cu, 0.3, window)
    torch.testing.assert_close(out, expect, atol=TOL[dtype][0], rtol=TOL[dtype][1])


@pytest.mark.parametrize(("groups", "window"), [(1, None), (4, None), (2, 3), (1, 20)])
@pytest.mark.parametrize("max_gather", [65536, 20])
def test_chunks_and_prefix_hits_match_twin(groups: int, window, max_gather: int, monkeypatch):
    """New tokens over their cached prefix, read back through scattered block tables; with a
    small gather budget the batch runs as several launches and still matches."""
    monkeypatch.setattr(flex_prefill, "MAX_GATHER_TOKENS", max_gather)
    q, k, v, kc, vc, cu, prefixes, tables = _paged(SEQS, 4, 2, 2 * groups, 16, torch.float32, 1)
    out = flex_prefill.flex_prefill_paged(
        q, kc, vc, cu, prefixes, tables, 0.25, window, compiled=False, block=16
    )
    expect = torch_ref.prefill_attention_paged(q, k, v, kc, vc, cu, prefixes, tables, 0.25, window)
    assert bool(out.isfinite().all())
    torch.testing.assert_close(out, expect, atol=2e-5, rtol=2e-5)
    groups_run = flex_prefill._plan(cu, prefixes, tables, 4, window, q.device, 16)
    assert (len(groups_run) > 1) == (max_gather < 65536)


def _true_mask(cu, prefixes, window) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """[T, context] bool from positions alone: same prompt, causal, within the window."""
    rows, cols = [], []
    for i, (s, e) in enumerate(itertools.pairwise(cu)):
        p = prefixes[i] if prefixes is not None else 0
        rows += [(i, p + j) for j in range(e - s)]
        cols += [(i, a) for a in range((p if prefixes is not None else 0) + e - s)]
    if prefixes is None:
        cols = rows
    out = torch.zeros(len(rows), len(cols), dtype=torch.bool)
    for r, (doc, pos) in enumerate(rows):
        for c, (doc_k, pos_k) in enumerate(cols):
            seen = window is None or pos_k > pos - window
            out[r, c] = doc == doc_k and pos_k <= pos and seen
    return out


@pytest.mark.parametrize("block", [4, 8])
@pytest.mark.parametrize("window", [None, 2, 9])
@pytest.mark.parametrize("paged", [False, True])
def test_block_mask_reads_exactly_the_allowed_keys(block: int, window, paged: bool) -> None:
    """What the compiled kernel computes (full blocks whole, partial ones through the mask) is
    exactly the per-prompt causal (windowed) mask, and whole blocks are skipped."""
    gen = torch.Generator().manual_seed(block + (window or 0))
    for _ in range(4):
        lens = torch.randint(1, 14, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen)
        cu = _cu(lens.tolist())
        prefixes = torch.randint(0, 11, (len(lens),), generator=gen).tolist() if paged else None
        bounds = flex_plan.row_bounds(cu, prefixes, window, block)
        expect = _true_mask(cu, prefixes, window)
        assert torch.equal(flex_plan.effective_mask(bounds, block), expect)
        partial, full = flex_plan.block_classes(bounds, block)
        if len(lens) > 2:
            assert int((partial | full).sum()) < partial.numel()


def test_a_prompts_nan_values_stay_its_own() -> None:
    """Keys of two prompts share a block; one prompt's NaN/inf values must not reach the other
    (FlexAttention weighs masked values by 0, and 0 * NaN is NaN)."""
    q, k, v, cu = _fresh([3, 6], 2, 2, 16, torch.float32, seed=3)
    clean = torch_ref.prefill_attention(q, k, v, cu, 0.25)
    v[0, 0, 0], v[1, 1, 2] = float("nan"), float("inf")
    out = flex_prefill.flex_prefill(q, k, v, cu, 0.25, compiled=False, block=16)
    torch.testing.assert_close(out[3:], clean[3:], atol=2e-5, rtol=2e-5)


def test_paged_nan_values_stay_their_own() -> None:
    q, k, v, kc, vc, cu, prefixes, tables = _paged([(2, 2), (3, 3)], 4, 2, 2, 16, torch.float32, 4)
    clean = torch_ref.prefill_attention_paged(q, k, v, kc, vc, cu, prefixes, tables, 0.25)
    vc[int(tables[0, 0]), 1] = float("nan")  # the first prompt's prefix
    out = flex_prefill.flex_prefill_paged(
        q, kc, vc, cu, prefixes, tables, 0.25, compiled=False, block=16
    )
    torch.testing.assert_close(out[2:], clean[2:], atol=2e-5, rtol=2e-5)


def test_unsupported_inputs_are_named() -> None:
    reason = flex_prefill.unsupported_reason
    assert reason(False, torch.float16, torch.float16, 128) == "not on CUDA"
    assert reason(True, torch.bfloat16, torch.bfloat16, 128) is None
    assert reason(True, torch.float32, torch.float32, 64) is None
    assert "head dim 80" in reason(True, torch.float16, torch.float16, 80)
    assert "head dim 8" in reason(True, torch.float16, torch.float16, 8)
    assert "dtype" in reason(True, torch.float64, torch.float64, 128)
    assert "dtype" in reason(True, torch.float16, torch.float8_e4m3fn, 128)


@pytest.fixture
def flex_forced(monkeypatch):
    """The dispatch entry as on CUDA (support check passes), with the failure state reset."""
    as_on_cuda = lambda q, k: flex_prefill.unsupported_reason(True, q.dtype, k.dtype, q.shape[-1])  # noqa: E731
    monkeypatch.setattr(flex_prefill, "unsupported", as_on_cuda)
    monkeypatch.setattr(flex_prefill, "_failed", [])
    monkeypatch.setattr(flex_prefill, "_warned", set())


def test_a_failing_compile_falls_back_once_with_a_log_line(flex_forced, monkeypatch, caplog):
    calls = []

    def broken():  # type: ignore[no-untyped-def]
        calls.append(1)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(flex_prefill, "compiled_flex", broken)
    q, k, v, cu = _fresh([4, 9], 4, 2, 16, torch.float32, seed=5)
    expect = torch_ref.prefill_attention(q, k, v, cu, 0.25)
    with caplog.at_level(logging.WARNING, logger="loraplex.kernels.flex_prefill"):
        for _ in range(2):
            torch.testing.assert_close(flex_prefill.prefill_attention(q, k, v, cu, 0.25), expect)
    assert len(calls) == 1  # not retried on every step
    assert any("no compiler here" in r.getMessage() for r in caplog.records)


def test_dispatch_entry_runs_flex_when_supported(flex_forced, monkeypatch):
    """With support (CUDA), the entry point takes the FlexAttention path, not the twin."""
    monkeypatch.setattr(flex_prefill, "compiled_flex", flex_prefill._flex_attention)
    monkeypatch.setattr(torch_ref, "prefill_attention", None)  # the twin must not be called
    q, k, v, cu = _fresh([4, 9], 4, 2, 16, torch.float32, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_prefill.prefill_attention(q, k, v, cu, 0.25)
    assert out.shape == q.shape and bool(out.isfinite().all())


def test_triton_namespace_uses_the_flex_entry_points() -> None:
    pytest.importorskip("triton")
    ops = _triton_ops()
    assert ops.prefill_attention is flex_prefill.prefill_attention
    assert ops.prefill_attention_paged is flex_prefill.prefill_attention_paged


def test_cpu_tensors_take_the_twin_silently(caplog) -> None:
    q, k, v, cu = _fresh([3, 4], 2, 2, 16, torch.float32, seed=7)
    with caplog.at_level(logging.WARNING):
        out = flex_prefill.prefill_attention(q, k, v, cu, 0.25)
    assert torch.equal(out, torch_ref.prefill_attention(q, k, v, cu, 0.25))
    assert not caplog.records


def test_shapes_are_bucketed_to_powers_of_two() -> None:
    """Few distinct shapes for torch.compile: the next power of two, at least one block."""
    assert [flex_plan.padded(n) for n in (1, 128, 129, 4096, 4097)] == [128, 128, 256, 4096, 8192]
    assert flex_plan.padded(5, 4) == 8 and flex_plan.padded(0, 16) == 16
    b = flex_plan.row_bounds([0, 100, 300], [0, 200], None)
    assert (b.lo.shape[0], b.kv_pad) == (512, 512)  # 300 rows; 100 + 400 context tokens
