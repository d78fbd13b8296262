"""Disaggregated prefill -> decode inside one process: K/V hand-over gives the colocated tokens."""

from __future__ import annotations

import pytest

from loraplex import LLM, SamplingParams
from loraplex.engine.llm_engine import LLMEngine
from loraplex.tooling.demo import write_demo_model


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("demo"), num_adapters=3)


def _engine(demo, **kw) -> LLMEngine:
    return _llm(demo, **kw).engine


def _llm(demo, **kw) -> LLM:
    llm = LLM(
        demo.model_dir,
        dtype="float32",
        device="cpu",
        max_loras=2,
        max_lora_rank=32,
        block_size=4,
        **kw,
    )
    for a in demo.adapters:
        llm.add_lora(a.name, a.path)
    return llm


def test_handoff_matches_colocated(demo):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [100, 200], [42] * 13]
    loras = [demo.adapters[0].name, None, demo.adapters[2].name]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    colocated = _engine(demo)
    for i, (p, lo) in enumerate(zip(prompts, loras, strict=False)):
        colocated.add_request(f"r{i}", p, params, lo)
    expected: dict[str, list[int]] = {}
    while colocated.has_unfinished():
        for out in colocated.step():
            expected.setdefault(out.request_id, []).extend(out.new_token_ids)

    prefill, decode = _engine(demo), _engine(demo, num_kv_blocks=64)
    for i, (p, lo) in enumerate(zip(prompts, loras, strict=False)):
        prefill.add_request(f"r{i}", p, params, lo, prefill_only=True)
    got: dict[str, list[int]] = {}
    handoffs = 0
    while prefill.has_unfinished():
        for out in prefill.step():
            assert out.handoff is not None and not out.finished
            i = int(out.request_id[1:])
            assert decode.reserve_blocks(out.request_id, out.handoff.num_tokens)
            first = decode.inject(
                out.request_id,
                prompts[i],
                params,
                loras[i],
                out.handoff.first_token,
                out.handoff.payload,
            )
            got.setdefault(out.request_id, []).extend(first.new_token_ids)
            handoffs += 1
    assert handoffs == 3
    assert prefill.allocator.num_used == 0  # prefill freed every block after export
    while decode.has_unfinished():
        for out in decode.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert got == expected
    assert decode.allocator.num_used == 0


def test_reservation_refused_when_full_and_released(demo):
    engine = _engine(demo, num_kv_blocks=8)
    assert engine.reserve_blocks("a", 4 * 6)  # 6 blocks
    assert not engine.reserve_blocks("b", 4 * 3)  # 3 more do not fit
    engine.release_reservation("a")
    assert engine.allocator.num_free == 8
    assert engine.reserve_blocks("b", 4 * 3)


def test_handoff_skips_blocks_the_decode_engine_already_caches(demo):
    """The second request sharing a 12-token prefix (3 blocks) only ships its last block; the
    tokens equal a colocated run.  Another adapter shares nothing."""
    lora = demo.adapters[0].name
    shared = [(i * 13 + 4) % 500 for i in range(12)]
    prompts = [shared + [1, 2], shared + [3], shared + [3]]
    loras = [lora, lora, demo.adapters[1].name]
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    colocated = _llm(demo, enable_prefix_caching=False)
    expected = [o.token_ids for o in colocated.generate(prompts, params, lora=loras)]
    prefill, decode = _engine(demo), _engine(demo, num_kv_blocks=64)
    got, shipped = [], []
    for i, (p, lo) in enumerate(zip(prompts, loras, strict=True)):
        rid = f"r{i}"
        prefill.add_request(rid, p, params, lo, prefill_only=True)
        (out,) = prefill.step()
        cached = decode.reserve_for_prompt(rid, p, lo)
        assert cached is not None
        payload = out.handoff.payload[:, :, cached:]  # what the sender ships
        shipped.append(payload.shape[2])
        tokens = decode.inject(rid, p, params, lo, out.handoff.first_token, payload, cached)
        tokens = list(tokens.new_token_ids)
        while decode.has_unfinished():
            for o in decode.step():
                tokens += o.new_token_ids
        got.append(tokens)
    assert shipped == [4, 1, 4]  # 14 tokens -> 4 blocks; then 3 of 4 were cached
    assert got == expected
    assert decode.allocator.num_used == 0


def test_seeded_sampling_is_the_same_disaggregated(demo):
    """The prefill engine draws the first token, the decode engine the rest: with a seed the
    tokens equal a colocated run (each token's draw depends on the seed and its position)."""
    params = [
        SamplingParams(temperature=1.0, top_p=0.95, seed=100 + i, max_tokens=8, ignore_eos=True)
        for i in range(3)
    ]
    prompts = [[5, 6, 7, 8, 9], [100, 200, 300], [42] * 9]
    expected = [o.token_ids for o in _llm(demo).generate(prompts, params)]
    prefill, decode = _engine(demo), _engine(demo)
    got = []
    for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
        rid = f"s{i}"
        prefill.add_request(rid, p, sp, prefill_only=True)
        (out,) = prefill.step()
        assert decode.reserve_blocks(rid, out.handoff.num_tokens)
        first = decode.inject(rid, p, sp, None, out.handoff.first_token, out.handoff.payload)
        tokens = list(first.new_token_ids)
        while decode.has_unfinished():
            for o in decode.step():
                tokens += o.new_token_ids
        got.append(tokens)
    assert got == expected
    assert len({tuple(t) for t in got}) == 3
