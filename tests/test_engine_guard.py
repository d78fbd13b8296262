"""The engine is guarded: a request whose logits are not finite (a poisoned adapter) or whose step
raises ends alone with an error, while its batch-mates get exactly the tokens they get alone and
every block, pin and slot comes back.

The poisoned adapter's B weights are set to 1e30 after loading, bypassing upload validation as a
poisoned store would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.engine.failures import is_fatal
from loraplex.kvcache.block_allocator import blocks_for
from loraplex.tooling.demo import ALL_MODULES, TinyModelSpec
from tests.tiny_models import llm_with_adapters, ranked, write_model_and_adapters

SPEC = TinyModelSpec(seed=5, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2)
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18], [40, 41]]
LORAS = [None, "good", "bad", "good"]
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
# Seeded sampling draws from the request's own generator: also independent of its batch-mates.
PARAMS = [GREEDY, GREEDY, GREEDY, SamplingParams(temperature=0.9, seed=7, max_tokens=6)]
BAD = 2


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    adapters = ranked({"good": (8, ALL_MODULES), "bad": (4, ALL_MODULES)})
    return write_model_and_adapters(tmp_path_factory.mktemp("guard"), SPEC, adapters)


def _llm(model, graphs: bool = False, **kw) -> LLM:
    model_dir, paths = model
    llm = llm_with_adapters(
        model_dir, paths, dtype="float32", device="cpu", max_loras=2, max_lora_rank=8,
        block_size=4, num_kv_blocks=64, **kw,
    )  # fmt: skip
    if graphs:  # the static decode path the CUDA graphs replay, run eagerly on CPU
        eng = llm.engine
        eng.runner.enable_decode_graphs(8, blocks_for(eng.max_model_len, 4), capture=False)
    return llm


def _poison_adapter(llm: LLM, name: str = "bad") -> None:
    for module in llm.engine.adapters[name].modules.values():
        module.b.fill_(1e30)


def _alone(model, which: list[int] | None = None) -> list[list[int]]:
    """The tokens of each request ``which`` (default: the healthy ones), each run on its own on
    an engine with healthy adapters."""
    ref = _llm(model)
    which = [i for i in range(len(PROMPTS)) if i != BAD] if which is None else which
    return [ref.generate(PROMPTS[i], PARAMS[i], lora=LORAS[i])[0].token_ids for i in which]


def _assert_clean(llm: LLM) -> None:
    eng = llm.engine
    assert not eng.has_unfinished()
    assert eng.allocator.num_free == eng.allocator.num_blocks
    assert not any(eng.slots.pinned(name) for name in eng.slots.resident())
    assert torch.isfinite(eng.kv_cache.data).all()  # no poisoned K/V left for a later owner


@pytest.mark.parametrize("graphs", [False, True])
def test_poisoned_adapter_fails_alone(model, graphs: bool) -> None:
    llm = _llm(model, graphs)
    _poison_adapter(llm)
    outs = llm.generate(PROMPTS, PARAMS, lora=LORAS)
    bad = outs[BAD]
    assert bad.finish_reason == "error" and bad.token_ids == []
    assert bad.error == "the model produced non-finite logits for this request (adapter 'bad')"
    healthy = [o for i, o in enumerate(outs) if i != BAD]
    assert [o.finish_reason for o in healthy] == ["length"] * 3
    assert all(o.error is None for o in healthy)
    assert [o.token_ids for o in healthy] == _alone(model)
    _assert_clean(llm)
    # The engine goes on: the same requests again give the same tokens.
    again = llm.generate(PROMPTS, PARAMS, lora=LORAS)
    assert [o.token_ids for i, o in enumerate(again) if i != BAD] == _alone(model)


@pytest.mark.parametrize("graphs", [False, True])
def test_adapter_poisoned_mid_decode_fails_alone(model, graphs: bool) -> None:
    """The adapter turns bad while its request decodes in a batch with the others (decode rows,
    and with ``graphs`` the padded static path): only that request ends, keeping the tokens it
    had."""
    llm = _llm(model, graphs)
    eng = llm.engine
    for i, (p, sp, lo) in enumerate(zip(PROMPTS, PARAMS, LORAS, strict=True)):
        eng.add_request(f"r{i}", p, sp, lo)
    got: dict[str, list[int]] = {}
    finished = {}
    for _ in range(2):  # prefill, then one decode step
        for out in eng.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    slot = eng.scheduler.find(f"r{BAD}").lora_slot
    for b in eng.lora_weights.b.values():
        b[:, slot].fill_(1e30)
    while eng.has_unfinished():
        for out in eng.step():
            got[out.request_id].extend(out.new_token_ids)
            if out.finished:
                finished[out.request_id] = (out.finish_reason, out.error)
    assert len(got[f"r{BAD}"]) == 2
    assert finished[f"r{BAD}"][0] == "error" and "non-finite" in finished[f"r{BAD}"][1]
    assert [got[f"r{i}"] for i in range(len(PROMPTS)) if i != BAD] == _alone(model)
    if graphs:
        assert eng.runner.decode_graphs.replays > 0
    _assert_clean(llm)


def test_nonfinite_prompt_logprobs_fail_before_the_last_chunk(model) -> None:
    """A prompt prefilled in chunks scores its prompt logprobs chunk by chunk: a non-finite
    score ends the request at once, before it ever reaches a sampled row."""
    llm = _llm(model, max_num_batched_tokens=8)
    _poison_adapter(llm)
    eng = llm.engine
    long_prompt = list(range(100, 130))
    params = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=2, ignore_eos=True)
    eng.add_request("bad", long_prompt, params, "bad")
    (out,) = eng.step()  # the first 8-token chunk
    assert out.request_id == "bad" and out.finish_reason == "error"
    assert "non-finite" in out.error
    _assert_clean(llm)


def test_a_step_that_raises_fails_exactly_its_requests(model) -> None:
    llm = _llm(model, max_num_seqs=2)
    eng = llm.engine
    forward = eng.model.forward
    calls = 0

    def fails_once(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("injected fault")
        return forward(*args, **kwargs)

    eng.model.forward = fails_once
    for i in range(3):  # only two fit in a step: r2 waits, outside the failing step
        eng.add_request(f"r{i}", PROMPTS[i], PARAMS[i], LORAS[i])
    outs = eng.step()
    assert sorted(o.request_id for o in outs) == ["r0", "r1"]
    assert all(o.finish_reason == "error" and "ValueError" in o.error for o in outs)
    assert "injected" not in outs[0].error  # details stay in the log
    assert eng.failed_steps_in_a_row == 1
    # The waiting request and a later one run as if nothing happened.
    eng.add_request("r3", PROMPTS[3], PARAMS[3], LORAS[3])
    got: dict[str, list[int]] = {}
    while eng.has_unfinished():
        for out in eng.step():
            assert out.error is None
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert eng.failed_steps_in_a_row == 0
    assert [got["r2"], got["r3"]] == _alone(model, [2, 3])
    _assert_clean(llm)


def test_a_failed_adapter_load_empties_its_slot(model) -> None:
    """A step that raised while copying an adapter into its slot must not leave the slot
    looking loaded: the next request of that adapter loads it again."""
    llm = _llm(model)
    eng = llm.engine
    load = eng.lora_weights.load
    calls = 0

    def fails_once(slot, adapter):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected fault while loading")
        load(slot, adapter)

    eng.lora_weights.load = fails_once
    (out,) = llm.generate(PROMPTS[1], GREEDY, lora="good")
    assert out.finish_reason == "error"
    assert eng.slots.slot_of("good") is None
    (out,) = llm.generate(PROMPTS[1], GREEDY, lora="good")
    assert out.token_ids == _alone(model, [1])[0]
    _assert_clean(llm)


def test_fatal_errors_propagate(model) -> None:
    llm = _llm(model)
    eng = llm.engine

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    eng.model.forward = oom
    with pytest.raises(torch.OutOfMemoryError):
        llm.generate(PROMPTS[0], GREEDY)


def test_is_fatal() -> None:
    assert is_fatal(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_fatal(torch.AcceleratorError("CUDA error: an illegal memory access"))
    assert is_fatal(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_fatal(RuntimeError("CUDA error: misaligned address"))
    assert is_fatal(MemoryError())
    try:  # raised while handling a CUDA error (a kernel launcher wrapping it)
        try:
            raise RuntimeError("CUDA error: unspecified launch failure")
        except RuntimeError as e:
            raise ValueError("kernel failed") from e
    except ValueError as wrapped:
        assert is_fatal(wrapped)
    assert not is_fatal(RuntimeError("probability tensor contains either inf, nan or element < 0"))
    assert not is_fatal(ValueError("stop string mentions a CUDA error"))  # may quote client text
    assert not is_fatal(IndexError("index 5 is out of bounds"))


def test_decode_attention_never_reads_what_it_masks() -> None:
    """The torch twin of paged decode attention: non-finite K/V in blocks a row does not own
    (block 0 pads short block tables) or past its context must not reach its output, or one
    poisoned request would turn its batch-mates' rows into NaN (the Triton kernel loads masked
    positions as zeros)."""
    from loraplex.kernels import torch_ref

    gen = torch.Generator().manual_seed(0)
    k_cache = torch.randn(5, 4, 2, 8, generator=gen)  # [blocks, block_size, KVH, D]
    v_cache = torch.randn(5, 4, 2, 8, generator=gen)
    q = torch.randn(2, 4, 8, generator=gen)  # [B, H, D]
    tables = torch.tensor([[1, 0, 0], [2, 3, 4]], dtype=torch.int32)
    lens = torch.tensor([3, 9], dtype=torch.int32)
    want = torch_ref.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.3)
    for cache in (k_cache, v_cache):
        cache[0] = float("nan")  # someone else's poisoned block, read as padding
        cache[1, 3] = float("inf")  # past row 0's context
    got = torch_ref.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.3)
    torch.testing.assert_close(got, want)


def test_nonfinite_message_names_the_adapter_as_the_client_knows_it() -> None:
    from loraplex.engine.failures import nonfinite_message
    from loraplex.engine.sequence import Sequence

    def msg(lora: str | None) -> str:
        return nonfinite_message(Sequence("r", [1], GREEDY, lora))

    assert msg("alice/bad@3").endswith("(adapter 'bad')")
    assert msg("bad").endswith("(adapter 'bad')")
    assert msg(None).endswith("(no adapter)")
