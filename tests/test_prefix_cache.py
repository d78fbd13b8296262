"""Prefix caching: the pure block bookkeeping, then the engine reusing cached K/V."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.engine.sequence import cache_namespace
from loraplex.kvcache.prefix_cache import CachingBlockAllocator, block_keys
from loraplex.tooling.demo import (
    ALL_MODULES,
    TinyModelSpec,
    write_random_adapter,
)
from tests.hf_reference import HFReference
from tests.tiny_models import llm_with_adapters, ranked, write_model_and_adapters

# ------------------------------------------------------------------------- pure bookkeeping


def test_block_keys_chain_and_namespace() -> None:
    toks = list(range(10))
    keys = block_keys(toks, 4, "")
    assert len(keys) == 2  # the 2 trailing tokens are not a full block
    assert block_keys(toks[:8], 4, "") == keys
    assert block_keys(toks, 4, "a") != keys  # another adapter: other K/V
    assert block_keys(toks, 4, "a")[0] != block_keys(toks, 4, "b")[0]
    # Same second block after a different first block: different key (keys chain).
    assert block_keys([9, 9, 9, 9] + toks[4:8], 4, "")[1] != keys[1]
    # Continuing from a parent key gives the same keys as hashing from the start.
    assert block_keys(toks, 4, "", parent=keys[0], start=4) == keys[1:]
    # Stable across processes (a decode worker recomputes a prefill worker's keys), whatever
    # their string-hash seeds.
    code = (
        "from loraplex.kvcache.prefix_cache import block_keys as b; print(b(%r, 4, 'a')[1].hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code % toks],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == block_keys(toks, 4, "a")[1].hex()


def test_freed_registered_blocks_stay_findable_until_evicted() -> None:
    alloc = CachingBlockAllocator(4, block_size=2)
    keys = block_keys([1, 2, 3, 4, 5, 6], 2, "")
    blocks = alloc.allocate(3)
    for b, k in zip(blocks, keys, strict=True):
        alloc.register(b, k)
    assert alloc.lookup(keys) == blocks
    alloc.free(blocks)
    assert alloc.num_free == 4 and alloc.num_cached == 3
    assert alloc.lookup(keys) == blocks  # content kept while nobody needs the space
    assert alloc.revive_cost(blocks[:2]) == 2
    alloc.acquire(blocks[:2])
    assert alloc.num_free == 2 and alloc.ref_count(blocks[0]) == 1
    # Two allocations: first the never-used block, then the one cached block nobody holds.
    fresh = alloc.allocate(2)
    assert blocks[2] in fresh and alloc.lookup(keys) == blocks[:2]
    assert not alloc.can_allocate(1)
    with pytest.raises(MemoryError):
        alloc.allocate(1)


def test_eviction_is_least_recently_freed_first() -> None:
    alloc = CachingBlockAllocator(3, block_size=1)
    a, b, c = alloc.allocate(3)
    for blk, key in ((a, 10), (b, 11), (c, 12)):
        alloc.register(blk, key)
    alloc.free([b])
    alloc.free([a])
    alloc.free([c])
    assert alloc.allocate(1) == [b]
    assert alloc.lookup([11]) == [] and alloc.lookup([10]) == [a]


def test_shared_block_counts_references() -> None:
    alloc = CachingBlockAllocator(2, block_size=1)
    (blk,) = alloc.allocate(1)
    alloc.register(blk, 5)
    alloc.acquire([blk])  # a second sequence reuses it while the first still runs
    alloc.free([blk])
    assert alloc.num_free == 1  # still held once
    alloc.free([blk])
    assert alloc.num_free == 2 and alloc.lookup([5]) == [blk]
    with pytest.raises(ValueError):
        alloc.free([blk])
    with pytest.raises(ValueError):
        alloc.register(blk, 6)  # not allocated
    alloc.reset()
    assert alloc.lookup([5]) == [] and alloc.num_free == 2


def test_forget_namespace_drops_only_that_adapters_blocks() -> None:
    alloc = CachingBlockAllocator(4, block_size=1)
    a, b, c = alloc.allocate(3)
    alloc.register(a, b"ka", "lora-x")
    alloc.register(b, b"kb", "lora-y")
    alloc.register(c, b"kc", "lora-x")
    alloc.free([a, b])  # a, b evictable; c still in use
    assert alloc.forget_namespace("lora-x") == 2
    assert alloc.lookup([b"ka"]) == [] and alloc.lookup([b"kc"]) == []
    assert alloc.lookup([b"kb"]) == [b]
    assert alloc.num_free == 3  # a went back to the free list, b stays evictable
    alloc.free([c])  # no longer registered: straight to the free list
    assert alloc.num_free == 4 and alloc.num_cached == 1


# --------------------------------------------------------------------------------- engine

SPEC = TinyModelSpec(arch="qwen2", seed=31, num_kv_heads=1)
SYSTEM = [(i * 53 + 11) % 1000 for i in range(13)]  # a shared "system prompt", 3+ blocks of 4
PROMPTS = [SYSTEM + [5, 6, 7], SYSTEM + [900], SYSTEM[:8], SYSTEM + [5, 6, 7, 8, 9]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    adapters = {"a": (4, ALL_MODULES), "b": (4, ALL_MODULES)}  # alpha 8, seeds 0 and 1
    return write_model_and_adapters(tmp_path_factory.mktemp("prefix"), SPEC, ranked(adapters))


def _llm(model_dir, caching: bool = True, **kw) -> LLM:
    model, paths = model_dir
    return llm_with_adapters(
        model,
        paths,
        dtype="float32",
        device="cpu",
        max_loras=2,
        max_lora_rank=8,
        block_size=4,
        enable_prefix_caching=caching,
        **kw,
    )


GREEDY = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


def test_later_prompts_reuse_the_shared_prefix_and_match_hf(model_dir) -> None:
    model, paths = model_dir
    ref = HFReference(model, paths)
    llm = _llm(model_dir)
    sched = llm.engine.scheduler
    outs = []
    for p in PROMPTS:  # one at a time, so every later prompt finds the earlier ones' blocks
        outs.append(llm.generate([p], GREEDY, lora="a")[0].token_ids)
    assert outs == [ref.greedy(p, "a", 5)[0] for p in PROMPTS]
    # Prompt 1 reuses 3 blocks (12 of its 14 tokens); prompt 2 (8 tokens) reuses 1 block, as
    # its last token's block must run; prompt 3 reuses prompt 0's 4 blocks (16 of 18 tokens).
    assert sched.prefix_hit_tokens == 12 + 4 + 16
    assert sched.prefix_query_tokens == sum(len(p) for p in PROMPTS)


def test_outputs_equal_without_caching_in_one_batch(model_dir) -> None:
    """Concurrent requests (one batch; the cache fills as they run) and a second round that
    hits: same tokens and seeded samples as an engine with caching off."""
    params = [SamplingParams(temperature=0.7, seed=i, max_tokens=6) for i in range(4)]
    loras = ["a", None, "b", "a"]
    cached, plain = _llm(model_dir), _llm(model_dir, caching=False)
    for _ in range(2):
        want = [o.token_ids for o in plain.generate(PROMPTS, params, lora=loras)]
        assert [o.token_ids for o in cached.generate(PROMPTS, params, lora=loras)] == want
    assert cached.engine.scheduler.prefix_hit_tokens > 0
    assert plain.engine.scheduler.prefix_hit_tokens == 0


def test_adapters_never_share_blocks(model_dir) -> None:
    llm = _llm(model_dir)
    sched = llm.engine.scheduler
    llm.generate([PROMPTS[0]], GREEDY, lora="a")
    llm.generate([PROMPTS[1]], GREEDY, lora="b")
    llm.generate([PROMPTS[1]], GREEDY, lora=None)
    assert sched.prefix_hit_tokens == 0
    llm.generate([PROMPTS[1]], GREEDY, lora="b")
    assert sched.prefix_hit_tokens == 12


def test_replaced_adapter_does_not_reuse_old_blocks(model_dir, tmp_path) -> None:
    model, _ = model_dir
    write_random_adapter(tmp_path / "a2", SPEC, rank=4, alpha=8, targets=ALL_MODULES, seed=99)
    llm = _llm(model_dir)
    llm.generate([PROMPTS[0]], GREEDY, lora="a")
    llm.add_lora("a", tmp_path / "a2")  # same name, new weights
    got = llm.generate([PROMPTS[1]], GREEDY, lora="a")[0].token_ids
    assert llm.engine.scheduler.prefix_hit_tokens == 0
    ref = HFReference(model, {"a": tmp_path / "a2"})
    assert got == ref.greedy(PROMPTS[1], "a", 5)[0]


def test_cached_blocks_are_evicted_under_pressure(model_dir) -> None:
    """A cache of 12 blocks: old prefixes give way to new prompts, and results stay right."""
    llm = _llm(model_dir, num_kv_blocks=12, max_model_len=40)
    plain = _llm(model_dir, caching=False, num_kv_blocks=12, max_model_len=40)
    prompts = [[(i * 7 + j) % 1000 for j in range(21)] for i in range(6)] + [PROMPTS[0]]
    want = [o.token_ids for o in plain.generate(prompts, GREEDY)]
    assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == want
    alloc = llm.engine.allocator
    assert alloc.num_free == alloc.num_blocks  # nothing leaked; cached blocks count as free
    assert alloc.num_cached <= alloc.num_blocks


def test_first_token_logits_match_with_a_cached_prefix(model_dir) -> None:
    cached, plain = _llm(model_dir), _llm(model_dir, caching=False)
    for llm in (cached, plain):
        llm.generate([PROMPTS[0]], GREEDY, lora="b")
        llm.engine.add_request("x", PROMPTS[3], SamplingParams(temperature=0, max_tokens=1), "b")
        while llm.engine.has_unfinished():
            llm.engine.step()
    assert cached.engine.scheduler.prefix_hit_tokens == 16
    torch.testing.assert_close(
        cached.engine.last_logits["x"], plain.engine.last_logits["x"], atol=1e-5, rtol=1e-5
    )


def test_step_outputs_carry_each_prompts_prefix_cache_hits(model_dir) -> None:
    """``StepOutput.num_cached_tokens`` (what a worker reports as OpenAI's cached_tokens): the
    prompt tokens found in the cache when the request was admitted, on every output."""
    engine = _llm(model_dir).engine
    seen: dict[str, set[int | None]] = {}
    for rid, prompt in (("r0", PROMPTS[0]), ("r1", PROMPTS[1]), ("r3", PROMPTS[3])):
        engine.add_request(rid, prompt, GREEDY)
        while engine.has_unfinished():
            for out in engine.step():
                seen.setdefault(out.request_id, set()).add(out.num_cached_tokens)
    assert seen == {"r0": {0}, "r1": {12}, "r3": {16}}


def _run(engine, rid: str, prompt: list[int], lora: str | None, salt: str) -> int | None:
    """One request to the end; the prompt tokens it found cached."""
    engine.add_request(rid, prompt, GREEDY, lora, cache_salt=salt)
    cached = None
    while engine.has_unfinished():
        for out in engine.step():
            cached = out.num_cached_tokens
    return cached


def test_requests_reuse_only_prefixes_cached_under_their_salt(model_dir) -> None:
    """A cache salt (the gateway's: the tenant) splits the prefix cache: another salt finds
    nothing, the same salt finds its blocks, for the base model and for an adapter alike."""
    engine = _llm(model_dir).engine
    prompt = PROMPTS[0]
    for lora in (None, "a"):
        assert _run(engine, f"{lora}-alice", prompt, lora, "t:alice") == 0
        assert _run(engine, f"{lora}-bob", prompt, lora, "t:bob") == 0  # alice's are not bob's
        assert _run(engine, f"{lora}-plain", prompt, lora, "") == 0
        assert _run(engine, f"{lora}-alice2", prompt, lora, "t:alice") == (len(prompt) - 1) // 4 * 4
        # a K/V hand-over (a decode worker's reservation) reuses by the same rule
        assert engine.reserve_for_prompt(f"{lora}-kv-carol", prompt, lora, "t:carol") == 0
        assert engine.reserve_for_prompt(f"{lora}-kv-alice", prompt, lora, "t:alice") > 0
        engine.release_reservation(f"{lora}-kv-carol")
        engine.release_reservation(f"{lora}-kv-alice")


def test_removing_an_adapter_forgets_its_blocks_under_every_salt(model_dir, tmp_path) -> None:
    write_random_adapter(tmp_path / "a2", SPEC, rank=4, alpha=8, targets=ALL_MODULES, seed=99)
    llm = _llm(model_dir)
    engine = llm.engine
    for salt in ("t:alice", "t:bob"):
        _run(engine, f"first-{salt}", PROMPTS[0], "a", salt)
    # the blocks are filed under the adapter alone, whatever their salt
    computed = len(PROMPTS[0]) + GREEDY.max_tokens - 1  # the last sampled token never ran
    assert engine.allocator.forget_namespace(cache_namespace("a")) == 2 * (computed // 4)
    for salt in ("t:alice", "t:bob"):
        _run(engine, f"second-{salt}", PROMPTS[0], "a", salt)
    llm.add_lora("a", tmp_path / "a2")  # same name, new weights: no old K/V may serve it
    for salt in ("t:alice", "t:bob"):
        assert _run(engine, f"again-{salt}", PROMPTS[0], "a", salt) == 0
