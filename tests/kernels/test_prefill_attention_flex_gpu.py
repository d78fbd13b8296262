"""Prefill attention on the GPU: the compiled FlexAttention path against the twins, and no SDPA
math backend anywhere (CUDA only; `pytest -m gpu`).  The CPU half is
``test_prefill_attention_flex.py``."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from loraplex.kernels import flex_prefill, get_ops, torch_ref
from tests.kernels.test_prefill_attention_flex import _fresh, _paged

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FUSED_ONLY = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
]
TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3, torch.float32: 1e-3}


def _cuda(*xs):  # type: ignore[no-untyped-def]
    return [x.cuda() if isinstance(x, torch.Tensor) else x for x in xs]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# Each (dtype, GQA) pair is its own compiled graph: bf16, the serving dtype, gets every case;
# fp32 runs through the engine in test_decode_graphs_gpu.py.
FRESH = [
    (torch.bfloat16, (512,) * 8, 32, None),
    (torch.bfloat16, (80, 723, 1, 300, 129), 8, None),
    (torch.bfloat16, (700, 64, 257), 8, 128),
    (torch.float16, (80, 723, 1, 300, 129), 8, None),
]


@pytest.mark.parametrize(("dtype", "lens", "kvh", "window"), FRESH)
def test_fresh_prompts_match_twin(dtype, lens, kvh: int, window) -> None:
    """The engine's entry point on CUDA (compiled FlexAttention: 32 heads of 128, MHA and GQA,
    mixed lengths, a sliding window) against one SDPA per prompt."""
    q, k, v, cu = _cuda(*_fresh(list(lens), 32, kvh, 128, dtype, seed=len(lens)))
    out = get_ops("cuda").prefill_attention(q, k, v, cu, 128**-0.5, window)
    assert not flex_prefill._failed, flex_prefill._failed
    with sdpa_kernel(FUSED_ONLY):  # the twin itself never needs SDPA's math path
        expect = torch_ref.prefill_attention(q, k, v, cu, 128**-0.5, window)
    assert _rel(out, expect) < TOL[dtype]


@pytest.mark.parametrize(("dtype", "window"), [(torch.bfloat16, None), (torch.bfloat16, 512)])
def test_chunks_and_prefix_hits_match_twin(dtype, window) -> None:
    """512-token chunks after prefixes up to 1.5k tokens, a fresh 2k prompt and a 1-token chunk
    (Llama-3-8B heads: 32 query / 8 KV of 128), block size 16, scattered blocks."""
    seqs = [(0, 2048), (1000, 512), (1536, 512), (37, 1)]
    q, k, v, kc, vc, cu, prefixes, tables = _cuda(*_paged(seqs, 16, 8, 32, 128, dtype, seed=7))
    kc, vc = kc.nan_to_num(0), vc.nan_to_num(0)
    out = get_ops("cuda").prefill_attention_paged(
        q, k, v, kc, vc, cu, prefixes, tables, 128**-0.5, window
    )
    assert not flex_prefill._failed, flex_prefill._failed
    with sdpa_kernel(FUSED_ONLY):
        expect = torch_ref.prefill_attention_paged(
            q, k, v, kc, vc, cu, prefixes, tables, 128**-0.5, window
        )
    assert _rel(out, expect) < TOL[dtype]


def test_unsupported_head_dim_falls_back_without_math(caplog) -> None:
    """Head dim 80 is not FlexAttention's: one log line, the twin answers, and the twin runs
    on fused SDPA backends (GQA with a window mask included)."""
    q, k, v, cu = _cuda(*_fresh([100, 37], 8, 2, 80, torch.float16, seed=3))
    with caplog.at_level(logging.WARNING), sdpa_kernel(FUSED_ONLY):
        out = flex_prefill.prefill_attention(q, k, v, cu, 0.1, 16)
        expect = torch_ref.prefill_attention(q, k, v, cu, 0.1, 16)
    torch.testing.assert_close(out, expect)
    assert any("head dim 80" in r.getMessage() for r in caplog.records)


def test_a_prompts_nan_values_stay_its_own() -> None:
    q, k, v, cu = _cuda(*_fresh([100, 60], 32, 8, 128, torch.bfloat16, seed=4))
    clean = flex_prefill.prefill_attention(q, k, v, cu, 128**-0.5)
    v[99, 3, 5] = float("nan")  # last token of the first prompt: its block holds the second's
    out = flex_prefill.prefill_attention(q, k, v, cu, 128**-0.5)
    torch.testing.assert_close(out[100:], clean[100:])


def test_new_lengths_in_seen_buckets_do_not_recompile() -> None:
    """Once a shape bucket (``flex_plan.padded``) has run, other lengths in it compile nothing:
    what the start-up warm-up, which runs every bucket, relies on."""
    from loraplex.engine.warmup_run import count_compiles

    ops = get_ops("cuda")

    def fresh(lens, seed):  # type: ignore[no-untyped-def]
        q, k, v, cu = _cuda(*_fresh(list(lens), 32, 8, 128, torch.bfloat16, seed=seed))
        ops.prefill_attention(q, k, v, cu, 0.1)

    def paged(seqs, seed):  # type: ignore[no-untyped-def]
        ops.prefill_attention_paged(
            *_cuda(*_paged(seqs, 16, 8, 32, 128, torch.bfloat16, seed)), 0.1
        )

    for lens in ((100,), (1500, 200), (4000,)):  # query buckets 128, 2048, 4096
        fresh(lens, 1)
    paged([(200, 30), (0, 40), (100, 5)], 2)  # 75 queries over 375 context tokens
    with count_compiles() as compiled:
        for lens in ((77,), (1000, 5, 900), (4096,)):
            fresh(lens, 5)
        paged([(300, 7), (0, 90), (5, 1)], 6)  # 98 queries over 403 context tokens
        torch.cuda.synchronize()
    assert compiled.dynamo == 0
    assert not flex_prefill._failed, flex_prefill._failed
