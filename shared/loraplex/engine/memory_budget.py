"""How much device memory the K/V cache gets: ``gpu_memory_utilization`` as vLLM means it.

The fraction is of the device's TOTAL memory and covers everything this worker holds there: the
weights and adapter slots already loaded, the activations of a step, and the K/V cache, which gets
what is left.  Unlike "a share of the memory free at start-up", it does not depend on what other
workers happened to have allocated when this one started, so two workers given 0.45 each share a
GPU predictably, and a fraction that cannot fit is refused at start-up, not by an OOM later.

Pure arithmetic on byte counts (no torch): the engine passes ``torch.cuda.mem_get_info`` and
``torch.cuda.memory_reserved``; the tests pass made-up devices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loraplex.errors import LoraplexError

if TYPE_CHECKING:
    from loraplex.config import EngineConfig
    from loraplex.model.config import ModelConfig

log = logging.getLogger(__name__)

GiB = 2**30
FLAG = "--gpu-memory-utilization"
# CUDA graphs' private pools, cuBLAS workspaces, the allocator's fragmentation.
FIXED_OVERHEAD = 512 * 2**20


class MemoryBudgetError(LoraplexError):
    """The memory fraction cannot hold what this worker must put on the device."""


@dataclass(frozen=True)
class DeviceMemory:
    total: int  # bytes the device has
    free: int  # bytes free on the device now (every process counted)
    held: int  # bytes of live tensors this process holds now (weights, adapter slots)
    cached: int = 0  # bytes this process's allocator keeps but does not use (reusable)


def check_utilization(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise MemoryBudgetError(f"{FLAG} {fraction}: must be in (0, 1], a fraction of the total")
    return fraction


def activation_bytes(
    max_num_batched_tokens: int,
    max_num_seqs: int,
    hidden_size: int,
    intermediate_size: int,
    vocab_size: int,
    dtype_bytes: int,
) -> int:
    """An upper estimate of one step's transient memory: the largest prefill step's hidden
    states, q/k/v and gate/up (a few live at once), and fp32 logits plus their softmax for a
    full decode batch, then the fixed overhead."""
    per_token = (4 * hidden_size + 2 * intermediate_size) * dtype_bytes
    logits = 2 * max_num_seqs * vocab_size * 4
    return 2 * max_num_batched_tokens * per_token + logits + FIXED_OVERHEAD


def kv_cache_bytes(
    mem: DeviceMemory,
    fraction: float,
    activations: int,
    min_kv_bytes: int,
    wanted_kv_bytes: int,
    device: str = "the GPU",
) -> int:
    """Bytes for the K/V cache: what ``fraction`` of ``mem.total`` leaves after the weights and
    activations, at most ``wanted_kv_bytes`` (the engine's own cap).  MemoryBudgetError, naming
    the flag and the numbers, when that cannot hold one sequence (``min_kv_bytes``), or when the
    cache does not fit in the memory that is free (other processes hold the rest)."""
    check_utilization(fraction)
    budget = int(mem.total * fraction)
    kv = budget - mem.held - activations
    if kv < min_kv_bytes:
        need = mem.held + activations + min_kv_bytes
        raise MemoryBudgetError(
            f"{FLAG} {fraction:g} gives {budget / GiB:.1f} GiB of {device}'s "
            f"{mem.total / GiB:.1f} GiB, but the weights and adapter slots take "
            f"{mem.held / GiB:.1f} GiB, a step's activations about {activations / GiB:.1f} GiB and "
            f"one --max-model-len sequence of K/V {min_kv_bytes / GiB:.2f} GiB: "
            + (
                f"raise it to at least {_ceil_fraction(need, mem.total)}"
                if need <= mem.total
                else "even 1.0 cannot hold that: use a larger GPU"
            )
            + ", or lower --max-model-len, --max-num-batched-tokens or --max-loras"
        )
    take = min(kv, max(wanted_kv_bytes, min_kv_bytes))
    available = mem.free + mem.cached
    if take + activations > available:
        others = max(0, mem.total - mem.free - mem.held - mem.cached)
        raise MemoryBudgetError(
            f"{FLAG} {fraction:g} leaves {take / GiB:.1f} GiB of K/V cache on {device} "
            f"({mem.total / GiB:.1f} GiB), but only {available / GiB:.1f} GiB are free (other "
            f"processes hold {others / GiB:.1f} GiB): lower it to at most "
            f"{_floor_fraction(available + mem.held, mem.total)}, or give each worker its own GPU"
        )
    return take


def engine_kv_bytes(
    mem: DeviceMemory,
    cfg: EngineConfig,
    mc: ModelConfig,
    dtype_bytes: int,
    min_kv_bytes: int,
    wanted_kv_bytes: int,
    device: str,
) -> int:
    """``kv_cache_bytes`` for an engine's config and model, logged."""
    activations = activation_bytes(
        cfg.max_num_batched_tokens,
        cfg.max_num_seqs,
        mc.hidden_size,
        mc.intermediate_size,
        mc.vocab_size,
        dtype_bytes,
    )
    fraction = cfg.gpu_memory_utilization
    kv = kv_cache_bytes(mem, fraction, activations, min_kv_bytes, wanted_kv_bytes, device)
    log.info(
        "K/V cache on %s: %.2f GiB (gpu_memory_utilization %g of %.1f GiB; weights and adapter "
        "slots %.2f GiB, activations ~%.2f GiB)",
        device, kv / GiB, fraction, mem.total / GiB, mem.held / GiB, activations / GiB,
    )  # fmt: skip
    return kv


def _ceil_fraction(need: int, total: int) -> str:
    return f"{-(-need * 100 // total) / 100:.2f}"


def _floor_fraction(avail: int, total: int) -> str:
    return f"{avail * 100 // total / 100:.2f}"
