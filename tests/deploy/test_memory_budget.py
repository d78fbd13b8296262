"""--gpu-memory-utilization: a fraction of TOTAL device memory, checked on made-up devices."""

from __future__ import annotations

import pytest

from loraplex.engine.memory_budget import (
    DeviceMemory,
    GiB,
    MemoryBudgetError,
    activation_bytes,
    check_utilization,
    kv_cache_bytes,
)

H200 = 141 * GiB
WEIGHTS_7B = 14 * GiB
ACT = 2 * GiB
ONE_SEQ = GiB // 2
ALL = 10**15  # an engine that wants more K/V than any GPU has (the fraction decides)


def test_the_fraction_is_of_total_not_of_free() -> None:
    """Weights are loaded; the cache gets fraction * total minus weights and activations,
    whatever else is free (80% of free would have given 0.8 * 127 = 101.6 GiB)."""
    mem = DeviceMemory(total=H200, free=H200 - WEIGHTS_7B, held=WEIGHTS_7B)
    kv = kv_cache_bytes(mem, 0.9, ACT, ONE_SEQ, ALL)
    assert kv == int(H200 * 0.9) - WEIGHTS_7B - ACT


def test_two_workers_sharing_a_gpu_split_it() -> None:
    """The second of two 0.45 workers still fits: the first took only its own share."""
    first = kv_cache_bytes(
        DeviceMemory(H200, H200 - WEIGHTS_7B, WEIGHTS_7B), 0.45, ACT, ONE_SEQ, ALL
    )
    taken_by_first = WEIGHTS_7B + first + ACT
    second_mem = DeviceMemory(H200, H200 - taken_by_first - WEIGHTS_7B, WEIGHTS_7B)
    second = kv_cache_bytes(second_mem, 0.45, ACT, ONE_SEQ, ALL)
    assert second == first
    assert taken_by_first * 2 <= H200


def test_a_fraction_that_cannot_hold_the_weights_names_the_flag() -> None:
    mem = DeviceMemory(total=24 * GiB, free=10 * GiB, held=WEIGHTS_7B)
    with pytest.raises(MemoryBudgetError) as e:
        kv_cache_bytes(mem, 0.5, ACT, ONE_SEQ, ALL, "cuda:1")
    msg = str(e.value)
    assert msg.startswith("--gpu-memory-utilization 0.5 gives 12.0 GiB of cuda:1's 24.0 GiB")
    assert "weights and adapter slots take 14.0 GiB" in msg
    assert "raise it to at least 0.69" in msg  # (14 + 2 + 0.5) / 24 = 0.6875


def test_even_the_whole_gpu_is_too_small() -> None:
    mem = DeviceMemory(total=16 * GiB, free=GiB, held=15 * GiB)
    with pytest.raises(MemoryBudgetError, match="even 1.0 cannot hold that"):
        kv_cache_bytes(mem, 1.0, ACT, ONE_SEQ, ALL)


def test_more_than_is_free_is_refused_not_an_oom_later() -> None:
    """Another process holds 70 GiB: 0.9 of the GPU is not there to take."""
    mem = DeviceMemory(total=H200, free=H200 - 70 * GiB - WEIGHTS_7B, held=WEIGHTS_7B)
    with pytest.raises(MemoryBudgetError) as e:
        kv_cache_bytes(mem, 0.9, ACT, ONE_SEQ, ALL)
    msg = str(e.value)
    assert msg.startswith("--gpu-memory-utilization 0.9 leaves 110.9 GiB of K/V cache")
    assert "only 57.0 GiB are free (other processes hold 70.0 GiB)" in msg
    assert "lower it to at most 0.50" in msg
    assert kv_cache_bytes(mem, 0.5, ACT, ONE_SEQ, ALL) > 0  # the suggested value works


def test_the_engine_cap_is_taken_when_smaller() -> None:
    """An engine that wants little K/V (max_num_seqs x max_model_len) takes only that, and
    starts beside other processes as long as that little is free."""
    mem = DeviceMemory(total=H200, free=20 * GiB, held=WEIGHTS_7B)
    assert kv_cache_bytes(mem, 0.9, ACT, ONE_SEQ, 4 * GiB) == 4 * GiB
    assert kv_cache_bytes(mem, 0.9, ACT, ONE_SEQ, 0) == ONE_SEQ  # at least one sequence


def test_memory_the_allocator_caches_counts_as_free() -> None:
    """Blocks torch's allocator keeps from an earlier engine in the process are reusable."""
    mem = DeviceMemory(total=H200, free=10 * GiB, held=WEIGHTS_7B, cached=50 * GiB)
    assert kv_cache_bytes(mem, 0.9, ACT, ONE_SEQ, 40 * GiB) == 40 * GiB
    with pytest.raises(MemoryBudgetError):
        kv_cache_bytes(DeviceMemory(H200, 10 * GiB, WEIGHTS_7B), 0.9, ACT, ONE_SEQ, 40 * GiB)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01])
def test_fraction_range(bad: float) -> None:
    with pytest.raises(MemoryBudgetError, match="--gpu-memory-utilization"):
        check_utilization(bad)


def test_activation_estimate_grows_with_the_step() -> None:
    small = activation_bytes(512, 8, 4096, 11008, 32000, 2)
    big = activation_bytes(8192, 256, 4096, 11008, 128256, 2)
    assert 0 < small < big
    # Llama-3-8B shapes, 8192 batched tokens, 256 decode rows: one to a few GiB, not tens.
    assert GiB < big < 4 * GiB


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):  # type: ignore[no-untyped-def]
    from loraplex.config import EngineConfig
    from loraplex.engine.llm_engine import LLMEngine
    from loraplex.tooling.demo import TinyModelSpec
    from tests.tiny_models import write_model_and_adapters

    spec = TinyModelSpec(seed=7, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2)
    model, _ = write_model_and_adapters(tmp_path_factory.mktemp("budget"), spec, {})
    config = EngineConfig(max_num_seqs=4, max_model_len=64, gpu_memory_utilization=0.5)
    return LLMEngine(model, config, dtype="float32", device="cpu")


def test_the_engine_sizes_its_cache_from_the_fraction(tiny_engine, monkeypatch) -> None:
    """The engine's CUDA path, on a made-up 16 GiB GPU: the cache is the engine's own cap
    (4 x 64 tokens) when the fraction leaves more, and a fraction too small is refused."""
    import torch

    from loraplex.kvcache.paged_cache import PagedKVCache

    e = tiny_engine
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (12 * GiB, 16 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 3 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * GiB)
    monkeypatch.setattr(e, "device", torch.device("cuda:0"))
    per_block = PagedKVCache.bytes_per_block(e.model_config, e.config.block_size, e.dtype)
    assert e._num_kv_blocks() * e.config.block_size == 4 * 64  # the cap, not 0.5 x 16 GiB
    assert e._kv_bytes_on_gpu(per_block, 10**15) == 8 * GiB - 3 * GiB - activation_bytes(
        e.config.max_num_batched_tokens, 4, 32, 64, e.model_config.vocab_size, 4
    )
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 9 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 9 * GiB)
    with pytest.raises(MemoryBudgetError, match="^--gpu-memory-utilization 0.5 gives 8.0 GiB"):
        e._num_kv_blocks()
