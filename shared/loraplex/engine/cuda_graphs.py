"""Decode steps replayed from CUDA graphs, one graph per padded batch size (as vLLM does).

A graph freezes every pointer and launch grid, so the decode step reads its inputs from static
buffers sized once for the largest captured batch.  A batch of n rows is copied into the first n
rows and run by the graph of the smallest captured size >= n; the padded rows write no K/V
(slot -1), attend to nothing (context length 0, which gives zeros) and use no adapter (slot -1),
so they cost a little compute and change nothing.  Adapter weights sit at fixed addresses in
``LoraWeights`` and the kernels read each slot's rank on the device, so adapters paged in after
capture are seen by every replay without re-capturing.

Two graphs are captured per size: with LoRA (BGMV over per-row slots) and without (a batch whose
rows are all base-model rows skips LoRA entirely, as the eager path does).

``capture=False`` keeps the static, padded path but runs it eagerly.  That lets CPU tests
check the padding logic the graphs rely on, and is a way to bisect a suspected graph bug.
"""

from __future__ import annotations

import logging
import time
from types import ModuleType

import torch

from loraplex.engine.batch import ModelInput
from loraplex.forward_context import AttentionMeta, ForwardContext, LoraMeta
from loraplex.kvcache.paged_cache import PagedKVCache
from loraplex.lora.weights import LoraWeights
from loraplex.model.llama import LlamaForCausalLM

log = logging.getLogger(__name__)


def capture_sizes(max_batch: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, then every multiple of 8 up to ``max_batch`` (included)."""
    if max_batch < 1:
        return []
    sizes = [s for s in (1, 2, 4) if s <= max_batch]
    sizes += list(range(8, max_batch + 1, 8))
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


def padded_size(n: int, sizes: list[int]) -> int | None:
    """The smallest captured size that holds ``n`` rows, or None when ``n`` is too large."""
    return next((s for s in sizes if s >= n), None)


class StaticDecodeInputs:
    """Fixed-address input tensors of a decode step for up to ``max_batch`` rows."""

    def __init__(self, max_batch: int, max_blocks_per_seq: int, device: torch.device) -> None:
        i32, i64 = torch.int32, torch.int64
        self.max_batch, self.max_blocks = max_batch, max_blocks_per_seq
        self.input_ids = torch.zeros(max_batch, dtype=i64, device=device)  # [B]
        self.positions = torch.zeros(max_batch, dtype=i64, device=device)  # [B]
        self.slot_mapping = torch.full((max_batch,), -1, dtype=i64, device=device)  # [B]
        self.block_tables = torch.zeros(max_batch, max_blocks_per_seq, dtype=i32, device=device)
        self.context_lens = torch.zeros(max_batch, dtype=i32, device=device)  # [B]
        self.lora_indices = torch.full((max_batch,), -1, dtype=i32, device=device)  # [B]

    def fits(self, inp: ModelInput) -> bool:
        tables = inp.ctx.attn.block_tables
        return (
            len(inp.seqs) <= self.max_batch
            and tables is not None
            and tables.shape[1] <= self.max_blocks
        )

    def load(self, inp: ModelInput, size: int) -> None:
        """Copy a decode batch into rows [0, n) and neutralise rows [n, size)."""
        n, attn, lora = len(inp.seqs), inp.ctx.attn, inp.ctx.lora
        assert attn.block_tables is not None and attn.context_lens is not None
        width = attn.block_tables.shape[1]
        self.input_ids[:n].copy_(inp.input_ids, non_blocking=True)
        self.positions[:n].copy_(inp.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(attn.slot_mapping, non_blocking=True)
        self.block_tables[:n, :width].copy_(attn.block_tables, non_blocking=True)
        self.context_lens[:n].copy_(attn.context_lens, non_blocking=True)
        if lora.indices is not None:
            self.lora_indices[:n].copy_(lora.indices, non_blocking=True)
        else:
            self.lora_indices[:n].fill_(-1)
        # Columns past ``width`` keep stale block ids: always valid, never read (context bounds it).
        self.input_ids[n:size].zero_()
        self.positions[n:size].zero_()
        self.slot_mapping[n:size].fill_(-1)
        self.context_lens[n:size].zero_()
        self.lora_indices[n:size].fill_(-1)

    def context(self, size: int, lora_active: bool) -> ForwardContext:
        """Metadata over the first ``size`` rows (views: the addresses a graph captures)."""
        attn = AttentionMeta(
            is_prefill=False,
            slot_mapping=self.slot_mapping[:size],
            cu_seqlens=[],
            block_tables=self.block_tables[:size],
            context_lens=self.context_lens[:size],
        )
        # No segments: in a graph the per-row BGMV launch is the one with a fixed grid.
        lora = LoraMeta(lora_active, False, None, None, self.lora_indices[:size])
        return ForwardContext(attn, lora)


class DecodeGraphRunner:
    """Runs decode batches of up to ``max_batch`` rows from captured graphs (or the same static
    buffers eagerly with ``capture=False``); returns final hidden states [n, hidden]."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_cache: PagedKVCache,
        lora: LoraWeights,
        ops: ModuleType,
        max_batch: int,
        max_blocks_per_seq: int,
        device: torch.device,
        capture: bool = True,
    ) -> None:
        if capture and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device; use capture=False elsewhere")
        self.model, self.kv_cache, self.lora, self.ops = model, kv_cache, lora, ops
        self.sizes = capture_sizes(max_batch)
        self.inputs = StaticDecodeInputs(max_batch, max_blocks_per_seq, device)
        self.capture_enabled = capture
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, bool], torch.Tensor] = {}  # [size, hidden] per graph
        self.replays = 0

    def _forward(self, size: int, lora_active: bool) -> torch.Tensor:
        s = self.inputs
        ctx = s.context(size, lora_active)
        return self.model(
            s.input_ids[:size], s.positions[:size], ctx, self.kv_cache.layers, self.lora, self.ops
        )

    @torch.inference_mode()
    def capture(self) -> float:
        """Capture every (size, lora) graph, largest first so smaller ones reuse its memory pool;
        returns the seconds it took."""
        if not self.capture_enabled:
            return 0.0
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        # Warm-up runs compile the Triton kernels and settle allocations outside any capture.
        # Every row is padding (slot -1), so nothing is written to the cache.
        self.inputs.slot_mapping.fill_(-1)
        self.inputs.context_lens.zero_()
        self.inputs.lora_indices.fill_(-1)
        for size in reversed(self.sizes):
            for lora_active in (True, False):
                self._capture_one(size, lora_active, pool)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        log.info(
            "captured %d decode graphs (batch sizes %s) in %.1f s",
            len(self.graphs),
            self.sizes,
            seconds,
        )
        return seconds

    def _capture_one(self, size: int, lora_active: bool, pool: object) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(size, lora_active)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = self._forward(size, lora_active)
        self.graphs[(size, lora_active)] = graph
        self.outputs[(size, lora_active)] = out

    def can_run(self, inp: ModelInput) -> bool:
        return not inp.ctx.attn.is_prefill and self.inputs.fits(inp)

    def run(self, inp: ModelInput) -> torch.Tensor:
        """Decode ``inp`` (rows in ``inp.seqs`` order); returns hidden states [n, hidden].

        The returned tensor is a view of the graph's output buffer: use it before the next run.
        """
        n = len(inp.seqs)
        size = padded_size(n, self.sizes)
        assert size is not None and self.can_run(inp)
        self.inputs.load(inp, size)
        key = (size, inp.ctx.lora.active)
        self.replays += 1
        if not self.capture_enabled:
            with torch.inference_mode():
                return self._forward(*key)[:n]
        self.graphs[key].replay()
        return self.outputs[key][:n]
