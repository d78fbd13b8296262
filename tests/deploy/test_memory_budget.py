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


def test_the_fraction_is_of_total_not_of_free() -> None:
    """Weights are loaded; the cache gets fraction * total minus weights and activations,
    whatever else is free (80% of free would have given 0.8 * 127 = 101.6 GiB)."""
    mem = DeviceMemory(total=H200, free=H200 - WEIGHTS_7B, held=WEIGHTS_7B)
    kv = kv_cache_bytes(mem, 0.9, ACT, ONE_SEQ)
    assert kv == int(H200 * 0.9) - WEIGHTS_7B - ACT


def test_two_workers_sharing_a_gpu_split_it() -> None:
    """The second of two 0.45 workers still fits: the first took only its own share."""
    first = kv_cache_bytes(DeviceMemory(H200, H200 - WEIGHTS_7B, WEIGHTS_7B), 0.45, ACT, ONE_SEQ)
    taken_by_first = WEIGHTS_7B + first + ACT
    second_mem = DeviceMemory(H200, H200 - taken_by_first - WEIGHTS_7B, WEIGHTS_7B)
    second = kv_cache_bytes(second_mem, 0.45, ACT, ONE_SEQ)
    assert second == first
    assert taken_by_first * 2 <= H200


def test_a_fraction_that_cannot_hold_the_weights_names_the_flag() -> None:
    mem = DeviceMemory(total=24 * GiB, free=10 * GiB, held=WEIGHTS_7B)
    with pytest.raises(MemoryBudgetError) as e:
        kv_cache_bytes(mem, 0.5, ACT, ONE_SEQ, "cuda:1")
    msg = str(e.value)
    assert msg.startswith("--gpu-memory-utilization 0.5 gives 12.0 GiB of cuda:1's 24.0 GiB")
    assert "weights and adapter slots take 14.0 GiB" in msg
    assert "raise it to at least 0.69" in msg  # (14 + 2 + 0.5) / 24 = 0.6875


def test_even_the_whole_gpu_is_too_small() -> None:
    mem = DeviceMemory(total=16 * GiB, free=GiB, held=15 * GiB)
    with pytest.raises(MemoryBudgetError, match="even 1.0 cannot hold that"):
        kv_cache_bytes(mem, 1.0, ACT, ONE_SEQ)


def test_more_than_is_free_is_refused_not_an_oom_later() -> None:
    """Another process holds 70 GiB: 0.9 of the GPU is not there to take."""
    mem = DeviceMemory(total=H200, free=H200 - 70 * GiB - WEIGHTS_7B, held=WEIGHTS_7B)
    with pytest.raises(MemoryBudgetError) as e:
        kv_cache_bytes(mem, 0.9, ACT, ONE_SEQ)
    msg = str(e.value)
    assert "--gpu-memory-utilization 0.9 asks for 126.9 GiB" in msg
    assert "other processes hold 70.0 GiB" in msg and "at most 0.50" in msg
    assert kv_cache_bytes(mem, 0.5, ACT, ONE_SEQ) > 0  # the suggested value works


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
