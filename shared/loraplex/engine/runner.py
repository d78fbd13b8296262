"""Runs one model step over a scheduled batch: tensors in, last-token logits out."""

from __future__ import annotations

import torch

from loraplex.engine.batch import ModelInput, build_decode, build_prefill
from loraplex.engine.cuda_graphs import DecodeGraphRunner
from loraplex.engine.logprobs import TokenLogprobs, compute_prompt_logprobs
from loraplex.engine.sequence import Sequence
from loraplex.kernels import get_ops
from loraplex.kvcache.paged_cache import PagedKVCache
from loraplex.lora.weights import LoraWeights
from loraplex.model.llama import LlamaForCausalLM

PromptScores = list[tuple[Sequence, list[TokenLogprobs]]]


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_cache: PagedKVCache,
        lora: LoraWeights,
        device: torch.device,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.lora = lora
        self.device = device
        self.ops = get_ops(device)
        self.decode_graphs: DecodeGraphRunner | None = None

    def enable_decode_graphs(self, max_batch: int, max_blocks_per_seq: int, capture: bool) -> float:
        """Run decode steps of up to ``max_batch`` rows through static buffers, captured as CUDA
        graphs when ``capture``; returns the capture time in seconds."""
        self.decode_graphs = DecodeGraphRunner(
            self.model,
            self.kv_cache,
            self.lora,
            self.ops,
            max_batch,
            max_blocks_per_seq,
            self.device,
            capture,
        )
        return self.decode_graphs.capture()

    def prepare(
        self,
        seqs: list[Sequence],
        is_prefill: bool,
        num_new_tokens: list[int] | None = None,
        num_prefill_seqs: int | None = None,
    ) -> ModelInput:
        """``seqs[:num_prefill_seqs]`` (default: all of a prefill step) are prefill rows with
        ``num_new_tokens`` each; the rest decode one token (a mixed step)."""
        bs = self.kv_cache.block_size
        if not is_prefill:
            return build_decode(seqs, bs, self.device)
        n = len(seqs) if num_prefill_seqs is None else num_prefill_seqs
        counts = num_new_tokens[:n] if num_new_tokens is not None else None
        return build_prefill(seqs[:n], bs, self.device, counts, seqs[n:])

    @torch.inference_mode()
    def execute(self, inp: ModelInput) -> tuple[torch.Tensor, PromptScores]:
        """Run the model; returns fp32 logits [N, vocab] in the order of ``inp.seqs``, and the
        logprobs of the prompt tokens that ``inp.prompt_rows`` score (empty without any)."""
        graphs = self.decode_graphs
        if graphs is not None and graphs.can_run(inp):
            # Decode rows are their own logits rows (logits_index is 0..n-1).
            return self.model.compute_logits(graphs.run(inp)), []
        hidden = self.model(
            inp.input_ids, inp.positions, inp.ctx, self.kv_cache.layers, self.lora, self.ops
        )
        prompt = (
            compute_prompt_logprobs(self.model.compute_logits, hidden, inp.prompt_rows)
            if inp.prompt_rows
            else []
        )
        return self.model.compute_logits(hidden[inp.logits_index]), prompt
