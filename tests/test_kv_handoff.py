"""Disaggregated prefill -> decode inside one process: K/V hand-over gives the colocated tokens."""

from __future__ import annotations

import pytest

from loraplex import LLM, SamplingParams
from loraplex.demo import write_demo_model
from loraplex.engine.llm_engine import LLMEngine


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("demo"), num_adapters=3)


def _engine(demo, **kw) -> LLMEngine:
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
    return llm.engine


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
