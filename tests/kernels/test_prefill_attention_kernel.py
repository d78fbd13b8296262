"""Triton paged prefill attention (chunked prefill, prefix-cache hits) against its torch twin."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from loraplex.kernels import torch_ref as ref  # noqa: E402
from loraplex.kernels import triton_prefill_attention as tri  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}
DEV = "cuda" if torch.cuda.is_available() else "cpu"
# (prefix, new tokens) per sequence: no prefix, prefix inside a block, a 1-token chunk, long.
SEQS = [(0, 5), (5, 7), (17, 1), (3, 40)]


def _batch(seqs, block_size: int, kvh: int, heads: int, d: int, dtype, seed: int):
    """Cache holding every sequence's prefix + new K/V (as after ``store_kv``), NaN elsewhere;
    q and k/v of the new tokens packed; scattered block tables."""
    gen = torch.Generator().manual_seed(seed)
    ctx = [p + n for p, n in seqs]
    max_blocks = max(-(-c // block_size) for c in ctx) + 1
    num_blocks = len(seqs) * max_blocks + 2
    k_cache = torch.full((num_blocks, block_size, kvh, d), float("nan"))
    v_cache = k_cache.clone()
    perm = torch.randperm(num_blocks, generator=gen)
    tables = perm[: len(seqs) * max_blocks].view(len(seqs), max_blocks).clone()
    q, k, v = [], [], []
    for row, (p, n) in enumerate(seqs):
        pos = torch.arange(p + n)
        slots = tables[row][pos // block_size] * block_size + pos % block_size
        kk, vv = (
            torch.randn(p + n, kvh, d, generator=gen),
            torch.randn(p + n, kvh, d, generator=gen),
        )
        k_cache.view(-1, kvh, d)[slots] = kk
        v_cache.view(-1, kvh, d)[slots] = vv
        q.append(torch.randn(n, heads, d, generator=gen))
        k.append(kk[p:])
        v.append(vv[p:])
    cu = [0, *itertools.accumulate(n for _, n in seqs)]
    to = lambda x: x.to(DEV, dtype)  # noqa: E731
    return (
        to(torch.cat(q)), to(torch.cat(k)), to(torch.cat(v)), to(k_cache), to(v_cache), cu,
        [p for p, _ in seqs], tables.to(DEV, torch.int32),
    )  # fmt: skip


CASES = [
    (dname, groups, window, (4, 16)[i % 2])
    for i, (dname, groups, window) in enumerate(itertools.product(DTYPES, (1, 4), (None, 3, 20)))
]


@pytest.mark.parametrize(("dname", "groups", "window", "block_size"), CASES)
def test_paged_prefill_matches_twin(dname: str, groups: int, window, block_size: int) -> None:
    dtype, kvh, d = DTYPES[dname], 2, 24  # D not a power of two: masked lanes
    q, k, v, kc, vc, cu, prefixes, tables = _batch(
        SEQS, block_size, kvh, kvh * groups, d, dtype, seed=groups + block_size + (window or 0)
    )
    out = tri.prefill_attention_paged(q, k, v, kc, vc, cu, prefixes, tables, d**-0.5, window)
    # The twin gathers whole blocks, NaN tails included, so it runs on a zero-filled copy.
    expect = ref.prefill_attention_paged(
        q, k, v, kc.nan_to_num(0), vc.nan_to_num(0), cu, prefixes, tables, d**-0.5, window
    )
    assert bool(out.isfinite().all())
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, expect, atol=atol, rtol=rtol)


def test_no_prefix_equals_plain_causal_prefill() -> None:
    """Without prefixes the kernel computes ordinary causal prefill (from the cache)."""
    q, k, v, kc, vc, cu, prefixes, tables = _batch(
        [(0, 9), (0, 33)], 4, 2, 4, 16, torch.float32, seed=1
    )
    out = tri.prefill_attention_paged(q, k, v, kc, vc, cu, prefixes, tables, 0.25, None)
    torch.testing.assert_close(out, ref.prefill_attention(q, k, v, cu, 0.25), atol=2e-5, rtol=2e-5)


def test_wrapper_rejects_bad_inputs() -> None:
    q, k, v, kc, vc, cu, prefixes, tables = _batch([(2, 3)], 4, 2, 4, 16, torch.float32, 2)
    bad = {
        "q dtype": lambda: tri.prefill_attention_paged(q.long(), k, v, kc, vc, cu, prefixes, tables, 1.0),
        "heads": lambda: tri.prefill_attention_paged(q[:, :3], k, v, kc, vc, cu, prefixes, tables, 1.0),
        "prefixes": lambda: tri.prefill_attention_paged(q, k, v, kc, vc, cu, [], tables, 1.0),
        "cu": lambda: tri.prefill_attention_paged(q, k, v, kc, vc, [0, 2], prefixes, tables, 1.0),
        "tables": lambda: tri.prefill_attention_paged(q, k, v, kc, vc, cu, prefixes, tables.float(), 1.0),
        "window": lambda: tri.prefill_attention_paged(q, k, v, kc, vc, cu, prefixes, tables, 1.0, 0),
    }  # fmt: skip
    for name, call in bad.items():
        with pytest.raises(ValueError):
            call()
        assert name


def test_paged_prefill_compiles_for_sm90(sm90_compile) -> None:
    sm90_compile(
        """
        from loraplex.kernels import triton_prefill_attention as P
        for dt, window in ((torch.float16, None), (torch.bfloat16, 4096), (torch.float32, None)):
            q = torch.zeros(40, 32, 128, dtype=dt)
            kv = torch.zeros(40, 8, 128, dtype=dt)
            kc = torch.zeros(64, 16, 8, 128, dtype=dt)
            tables = torch.zeros(2, 16, dtype=torch.int32)
            P.prefill_attention_paged(q, kv, kv, kc, kc, [0, 8, 40], [16, 0], tables, 0.08, window)
        """
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dname", ["fp16", "bf16"])
@pytest.mark.parametrize("window", [None, 512])
def test_real_shapes_gpu(dname: str, window) -> None:
    """Llama-3-8B heads (32 query / 8 KV of 128): 512-token chunks after prefixes up to 1.5k
    tokens, a fresh 2k prompt and a 1-token chunk, block size 16."""
    dtype = DTYPES[dname]
    seqs = [(0, 2048), (1000, 512), (1536, 512), (37, 1)]
    q, k, v, kc, vc, cu, prefixes, tables = _batch(seqs, 16, 8, 32, 128, dtype, seed=7)
    out = tri.prefill_attention_paged(q, k, v, kc, vc, cu, prefixes, tables, 128**-0.5, window)
    expect = ref.prefill_attention_paged(
        q, k, v, kc.nan_to_num(0), vc.nan_to_num(0), cu, prefixes, tables, 128**-0.5, window
    )
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, expect, atol=atol, rtol=rtol)
