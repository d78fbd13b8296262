"""Start-up warm-up: which batch shapes it enumerates (pure), and that running them through a
real engine leaves it serving exactly as before.  The GPU half (no compile, no stall after
warm-up) is ``tests/kernels/test_warmup_gpu.py``."""

from __future__ import annotations

import logging

import pytest

from loraplex import SamplingParams
from loraplex.engine import warmup_run
from loraplex.engine.cuda_graphs import capture_sizes
from loraplex.engine.warmup import (
    Pattern,
    WarmupSpec,
    lora_ranks,
    token_buckets,
    warmup_patterns,
)
from loraplex.kernels.flex_plan import padded
from loraplex.kvcache.block_allocator import blocks_for
from loraplex.tooling.demo import ALL_MODULES, TinyModelSpec
from tests.tiny_models import llm_with_adapters, ranked, write_model_and_adapters

# The H200 engine run: 64 requests, 8192-token steps, 32 adapter slots of rank 64, graphs <= 64.
SERVING = WarmupSpec(64, 8192, 32, 64, 8192, 16, tuple(capture_sizes(64)))


def test_token_buckets_and_ranks() -> None:
    assert token_buckets(8192) == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    assert token_buckets(8192, light=True) == [16, 64, 256, 1024, 4096, 8192]
    assert token_buckets(6000)[-2:] == [4096, 6000]
    assert token_buckets(16) == [16]
    assert lora_ranks(64) == [8, 16, 32, 64]
    assert lora_ranks(48) == [8, 16, 32, 48]
    assert lora_ranks(64, light=True) == [64]


def _fits(spec: WarmupSpec, p: Pattern) -> bool:
    return (
        p.seqs + p.decode_rows <= spec.max_num_seqs
        and p.seqs * p.tokens <= spec.max_num_batched_tokens
        and p.prefix + p.tokens < spec.max_model_len
        and (p.table_width - 1) * spec.block_size + 1 < spec.max_model_len
        and p.adapters <= min(spec.max_loras, p.seqs + p.decode_rows)
        and p.rank <= spec.max_lora_rank
    )


def test_patterns_cover_every_shape_class() -> None:
    ps = warmup_patterns(SERVING)
    prefill = [p for p in ps if p.kind == "prefill" and not p.prefix]
    sizes = {p.seqs * p.tokens for p in prefill}
    assert sizes == set(token_buckets(8192))  # every prefill token bucket
    for tokens in sizes:
        modes = {(p.adapters, p.base_rows) for p in prefill if p.seqs * p.tokens == tokens}
        assert {(0, False), (1, False)} <= modes  # base-only and one segment
        if tokens >= 512:  # several prompts: many segments, and base rows beside adapter rows
            assert {(min(32, tokens // 256), False), (1, True)} <= modes
    # The stall seen on the H200: all rows of an 8192-token step on one adapter.
    assert Pattern(32, 256, adapters=1, rank=64) in ps
    assert Pattern(32, 256, adapters=32, rank=64) in ps
    assert {p.rank for p in ps if p.adapters} == {8, 16, 32, 64}
    # Chunked / prefix-cached prompts: every (query, gathered context) shape bucket of the
    # prefill attention, up to 64 prompts x 8191 tokens capped at one launch's 65536.
    paged = {(padded(p.seqs * p.tokens), padded(p.seqs * (p.prefix + p.tokens))) for p in ps}
    for q in (128, 256, 512, 1024, 2048, 4096, 8192):
        top = min(65536, padded(-(-q // 256) * 8191))
        wanted = {(q, kv) for kv in (128 * 2**i for i in range(10)) if 2 * q <= kv <= top}
        assert wanted <= paged, sorted(wanted - paged)
    assert (128, 128) in paged and (128, 8192) in paged
    widths = {p.table_width for p in ps if p.kind == "mixed"}
    assert widths == {1, 2, 16}
    assert {p.adapters > 0 for p in ps if p.kind == "mixed"} == {True, False}
    # Graphs cover decode batches of 1..64 rows: no eager decode pattern is needed.
    assert not [p for p in ps if p.kind == "decode"]
    assert all(_fits(SERVING, p) for p in ps)
    assert len(ps) == len(set(ps))


def test_decode_batches_the_graphs_do_not_cover() -> None:
    spec = WarmupSpec(64, 8192, 32, 64, 8192, 16, tuple(capture_sizes(16)))
    decode = [p for p in warmup_patterns(spec) if p.kind == "decode"]
    assert sorted({p.decode_rows for p in decode}) == [24, 32, 40, 48, 56, 64]
    assert {p.adapters for p in decode} == {0, 24, 32}
    eager = WarmupSpec(64, 8192, 32, 64, 8192, 16)  # enforce_eager: every size
    assert {p.decode_rows for p in warmup_patterns(eager) if p.kind == "decode"} == set(
        capture_sizes(64)
    )


def test_light_is_a_smaller_subset_and_off_is_empty() -> None:
    full, light = warmup_patterns(SERVING), warmup_patterns(SERVING, "light")
    assert set(light) < set(full) and len(light) < 0.7 * len(full)
    assert Pattern(32, 256, adapters=1, rank=64) in light
    assert warmup_patterns(SERVING, "off") == []


@pytest.mark.parametrize(
    "spec",
    [
        WarmupSpec(1, 8, 1, 8, 12, 4),
        WarmupSpec(3, 40, 2, 16, 30, 4, (1, 2)),
        WarmupSpec(8, 100, 4, 32, 64, 16),
    ],
)
def test_small_engines_get_patterns_within_their_limits(spec: WarmupSpec) -> None:
    ps = warmup_patterns(spec)
    assert ps and all(_fits(spec, p) for p in ps)
    assert max(p.seqs * p.tokens for p in ps) == min(
        spec.max_num_batched_tokens, spec.max_num_seqs * (spec.max_model_len - 1)
    )


SPEC = TinyModelSpec(seed=4, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2)
PROMPTS = [[5, 17, 300, 42, 7], [900, 12, 4], [3, 3, 3, 40, 41, 42, 43]]
LORAS = ["a", None, "b"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("warmup")
    return write_model_and_adapters(
        root, SPEC, ranked({"a": (8, ALL_MODULES), "b": (4, ("q_proj", "v_proj"))})
    )


def _llm(tiny, **options):  # type: ignore[no-untyped-def]
    model, paths = tiny
    opts = {"max_loras": 3, "max_lora_rank": 8, "max_num_seqs": 4, "max_model_len": 40}
    opts |= {"max_num_batched_tokens": 32, "block_size": 4} | options
    return llm_with_adapters(model, paths, dtype="float32", device="cpu", **opts)


def _generate(llm) -> list[list[int]]:  # type: ignore[no-untyped-def]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    return [o.token_ids for o in llm.generate(PROMPTS, params, lora=LORAS)]


def test_running_every_pattern_leaves_the_engine_as_it_was(tiny, monkeypatch, caplog) -> None:
    """Every pattern of a small engine runs through the real batch building and model (torch
    twins here); afterwards slots hold no rank, nothing is allocated, and requests produce
    the tokens a fresh engine produces."""
    expected = _generate(_llm(tiny))
    llm = _llm(tiny)
    eng = llm.engine
    extra = []
    monkeypatch.setattr(warmup_run, "EXTRA_STEPS", [lambda e, s: extra.append(s)])
    with caplog.at_level(logging.INFO, logger="loraplex.engine.warmup_run"):
        report = warmup_run.warm_up(eng, "full", force=True)
    spec = warmup_run.spec_of(eng)
    assert report.patterns == len(warmup_patterns(spec)) > 10
    assert extra == [spec]
    assert any("warm-up (full)" in r.getMessage() for r in caplog.records)
    assert all(int(r.abs().sum()) == 0 for r in eng.lora_weights.ranks.values())
    assert eng.allocator.num_free == eng.allocator.num_blocks
    assert not eng.slots.resident()
    assert _generate(llm) == expected


def test_each_pattern_runs_its_batch(tiny) -> None:
    """A pattern's made-up batch has the rows, prefixes, table widths and slots it names."""
    eng = _llm(tiny).engine
    seen = []
    prepare = eng.runner.prepare

    def recording(seqs, is_prefill, counts=None, n_prefill=None):  # type: ignore[no-untyped-def]
        inp = prepare(seqs, is_prefill, counts, n_prefill)
        seen.append((seqs, inp))
        return inp

    eng.runner.prepare = recording  # type: ignore[method-assign]
    p = Pattern(2, 5, prefix=3, decode_rows=1, table_width=3, adapters=2, base_rows=True, rank=8)
    logits = warmup_run.run_pattern(eng, p)
    (seqs, inp) = seen[0]
    assert logits.shape[0] == 3
    assert [s.num_cached for s in seqs[:2]] == [3, 3]
    assert inp.ctx.attn.prefix_lens == [3, 3] and inp.ctx.attn.cu_seqlens == [0, 5, 10]
    assert inp.ctx.attn.block_tables.shape[1] == 3  # the decode row's table width
    assert sorted(s.lora_slot for s in seqs) == [-1, 0, 1]


def test_off_and_cpu_do_nothing(tiny, monkeypatch) -> None:
    eng = _llm(tiny).engine
    monkeypatch.setattr(warmup_run, "run_pattern", None)  # would raise if called
    assert warmup_run.warm_up(eng).patterns == 0  # CPU, not forced
    assert warmup_run.warm_up(eng, "off", force=True).patterns == 0
    monkeypatch.setenv("LORAPLEX_WARMUP", "sometimes")
    with pytest.raises(ValueError, match="LORAPLEX_WARMUP"):
        warmup_run.warm_up(eng, force=True)


def test_resident_adapters_skip_the_adapter_patterns(tiny, monkeypatch) -> None:
    llm = _llm(tiny)
    _generate(llm)  # adapters a and b now sit in slots
    ran = []
    monkeypatch.setattr(warmup_run, "run_pattern", lambda e, p: ran.append(p))
    warmup_run.warm_up(llm.engine, "light", force=True)
    assert ran and not [p for p in ran if p.adapters]


def test_table_width_class_fits_a_context(tiny) -> None:
    eng = _llm(tiny).engine
    widest = blocks_for(eng.max_model_len - 1, eng.config.block_size)
    widths = {p.table_width for p in warmup_patterns(warmup_run.spec_of(eng))}
    assert max(widths) <= widest


def test_the_lora_kernels_warm_up_first_over_every_decode_size(tiny, monkeypatch) -> None:
    """The LoRA kernels' own warm-up (v2: block-size tuning) runs before the patterns, over the
    graph sizes and every eager size beyond them, and its summary reaches the log line."""
    from loraplex.kernels import lora_warmup

    eng = _llm(tiny, max_num_seqs=6).engine
    calls, order = [], []

    def fake(cfg, slots, rank, dtype, device, sizes, tokens):  # type: ignore[no-untyped-def]
        calls.append((slots, rank, list(sizes), tokens))
        order.append("lora")
        return lora_warmup.LoraWarmup("v2", 1.5, 12, ("k",))

    monkeypatch.setattr(lora_warmup, "warm_up_lora_kernels", fake)
    monkeypatch.setattr(warmup_run, "run_pattern", lambda e, p: order.append("pattern"))
    monkeypatch.setattr(warmup_run, "spec_of", lambda e: WarmupSpec(6, 32, 3, 8, 40, 4, (1, 2, 4)))
    report = warmup_run.warm_up(eng, "light", force=True)
    assert calls == [(3, 8, [1, 2, 4, 5, 6], 32)]
    assert order[0] == "lora" and order.count("pattern") == report.patterns
    assert "LoRA kernels v2: 12 launches, 1 shapes tuned in 1.5 s" in report.line()
