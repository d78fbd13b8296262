"""The in-process engine: requests in, token/text deltas out, one ``step()`` at a time.

The offline ``LLM`` API and the prefill/decode workers all wrap this class.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from loraplex.config import EngineConfig, resolve_device, resolve_dtype
from loraplex.engine.failures import RequestFailer, is_fatal, nonfinite_requests
from loraplex.engine.handover import Handover
from loraplex.engine.logprobs import compute_logprobs
from loraplex.engine.memory_budget import DeviceMemory, engine_kv_bytes
from loraplex.engine.outputs import StepOutput
from loraplex.engine.penalties import apply_penalties
from loraplex.engine.request_tracker import RequestTracker
from loraplex.engine.resume import resumed_params
from loraplex.engine.runner import ModelRunner
from loraplex.engine.sampler import sample
from loraplex.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from loraplex.engine.sequence import Sequence, cache_namespace
from loraplex.engine.structured import GrammarConstraints, overrun_message
from loraplex.errors import AdapterError, AdapterNotFoundError, CapacityError, InvalidRequestError
from loraplex.kvcache.block_allocator import BlockAllocator, blocks_for
from loraplex.kvcache.paged_cache import PagedKVCache
from loraplex.kvcache.prefix_cache import CachingBlockAllocator
from loraplex.lora.adapter import LoraAdapter, load_adapter_dir
from loraplex.lora.slot_table import SlotTable
from loraplex.lora.weights import LoraWeights
from loraplex.model.config import ModelConfig
from loraplex.model.loader import load_model
from loraplex.sampling_params import SamplingParams
from loraplex.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class LLMEngine:
    """One model with its K/V cache, adapter slots and step scheduler; owns the sampling of
    each step.  The per-request state (generators, detokenizers, grammars) and what each
    sampled token does are its ``requests`` (``request_tracker.py``), the decode side of a K/V
    hand-over its ``handover`` (``handover.py``), ending requests with an error its
    ``failures`` (``failures.py``)."""

    def __init__(
        self,
        model_dir: str | Path,
        config: EngineConfig | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
    ) -> None:
        self.config = cfg = config or EngineConfig()
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model_config = ModelConfig.from_dir(model_dir)
        self.tokenizer = Tokenizer(model_dir)
        mc = self.model_config
        # Prompts longer than max_num_batched_tokens are prefilled in chunks.
        self.max_model_len = cfg.max_model_len or mc.default_max_model_len
        self.model = load_model(model_dir, mc, self.dtype, self.device, self.max_model_len)
        # Adapter slots before the K/V cache: the cache is sized from what is left.
        self.lora_weights = LoraWeights(
            mc, cfg.max_loras, cfg.max_lora_rank, self.dtype, self.device
        )
        num_blocks = self._num_kv_blocks()
        self.kv_cache = PagedKVCache(mc, num_blocks, cfg.block_size, self.dtype, self.device)
        self.slots = SlotTable(cfg.max_loras)
        allocator_cls = CachingBlockAllocator if cfg.enable_prefix_caching else BlockAllocator
        self.allocator = allocator_cls(num_blocks, cfg.block_size)
        self.scheduler = Scheduler(
            SchedulerConfig(cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.block_size),
            self.allocator,
            self.slots,
        )
        self.runner = ModelRunner(self.model, self.kv_cache, self.lora_weights, self.device)
        if self._use_cuda_graphs():
            self.runner.enable_decode_graphs(
                min(cfg.max_num_seqs, cfg.max_cuda_graph_batch_size),
                blocks_for(self.max_model_len, cfg.block_size),
                capture=True,
            )
        self.adapters: dict[str, LoraAdapter] = {}
        self.last_logits: dict[str, torch.Tensor] = {}
        self.eos_ids = set(mc.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        self.grammars = GrammarConstraints(model_dir, mc.vocab_size, self.eos_ids)
        self.requests = RequestTracker(
            self.tokenizer,
            self.grammars,
            self.eos_ids,
            self.scheduler,
            self.kv_cache,
            self.max_model_len,
            self.device,
            cfg.seed,
        )
        self.handover = Handover(
            cfg.block_size,
            self.allocator,
            self.scheduler,
            self.kv_cache,
            self.adapters,
            self.requests.track,
            self.requests.forget,
            self.requests.append,
        )
        self.failures = RequestFailer(
            self.scheduler,
            self.allocator,
            self.kv_cache,
            self.slots,
            self.lora_weights,
            self.requests.forget,
        )
        # The hand-over's entry points, as the workers and tests call them.
        self.reserve_blocks = self.handover.reserve_blocks
        self.reserve_for_prompt = self.handover.reserve_for_prompt
        self.release_reservation = self.handover.release_reservation
        self.inject = self.handover.inject

    @property
    def failed_steps_in_a_row(self) -> int:
        """Steps that raised since the last one that did not."""
        return self.failures.failed_steps_in_a_row

    def _use_cuda_graphs(self) -> bool:
        # The torch twins read segment bounds on the host, which a graph cannot replay.
        return (
            self.device.type == "cuda"
            and not self.config.enforce_eager
            and self.runner.ops.backend == "triton"
        )

    def _num_kv_blocks(self) -> int:
        cfg, mc = self.config, self.model_config
        if cfg.num_kv_blocks:
            return cfg.num_kv_blocks
        per_block = PagedKVCache.bytes_per_block(mc, cfg.block_size, self.dtype)
        if cfg.kv_cache_memory_mb:
            return max(1, cfg.kv_cache_memory_mb * 2**20 // per_block)
        one_seq = blocks_for(self.max_model_len, cfg.block_size)
        wanted = cfg.max_num_seqs * one_seq
        if self.device.type == "cuda":
            wanted = self._kv_bytes_on_gpu(one_seq * per_block, wanted * per_block) // per_block
        return max(wanted, one_seq)

    def _kv_bytes_on_gpu(self, min_kv_bytes: int, wanted_kv_bytes: int) -> int:
        """What ``gpu_memory_utilization`` leaves for K/V, capped at what the engine wants
        (MemoryBudgetError when not even one sequence fits)."""
        free, total = torch.cuda.mem_get_info(self.device)
        held = torch.cuda.memory_allocated(self.device)
        mem = DeviceMemory(total, free, held, torch.cuda.memory_reserved(self.device) - held)
        dtype_bytes = torch.empty((), dtype=self.dtype).element_size()
        return engine_kv_bytes(
            mem, self.config, self.model_config, dtype_bytes, min_kv_bytes, wanted_kv_bytes,
            str(self.device),
        )  # fmt: skip

    # ---- adapters -------------------------------------------------------------------------
    def add_lora(self, name: str, path: str | Path) -> LoraAdapter:
        adapter = load_adapter_dir(path, name, self.model_config, self.config.max_lora_rank)
        return self.add_lora_adapter(adapter)

    def add_lora_adapter(self, adapter: LoraAdapter) -> LoraAdapter:
        """Register (or replace) a validated adapter; a resident stale copy is dropped."""
        if adapter.rank > self.config.max_lora_rank:
            raise AdapterError(
                f"adapter {adapter.name!r}: rank {adapter.rank} exceeds max_lora_rank"
            )
        if adapter.name in self.adapters:
            self.remove_lora(adapter.name)
        self.adapters[adapter.name] = adapter
        return adapter

    def remove_lora(self, name: str) -> None:
        """Forget an adapter.  Refused while running requests use it."""
        sched = self.scheduler
        if self.slots.pinned(name) or any(
            s.lora == name for s in (*sched.running, *sched.waiting, *sched.ready)
        ):
            raise AdapterError(f"adapter {name!r} is in use by queued or running requests")
        slot = self.slots.evict(name)
        if slot is not None:
            self.lora_weights.clear(slot)
        self.allocator.forget_namespace(cache_namespace(name))
        self.adapters.pop(name, None)

    # ---- requests -------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        lora: str | None = None,
        prefill_only: bool = False,
        generated: list[int] | None = None,
        cache_salt: str = "",
    ) -> None:
        """Queue a request.  ``generated``: the tokens it already produced on a worker that died
        (a migrated request); they are prefilled with the prompt and count as its outputs.
        ``cache_salt``: it reuses only prefixes cached under the same salt (``cache_namespace``)."""
        if not prompt_token_ids:
            raise InvalidRequestError("prompt must contain at least one token")
        generated = list(generated or [])
        if len(prompt_token_ids) + len(generated) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(prompt_token_ids)} tokens; this model's context is {self.max_model_len}"
            )
        vocab = self.model_config.vocab_size
        if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= vocab:
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})")
        if generated:
            params = resumed_params(params, generated, vocab)
        if lora is not None and lora not in self.adapters:
            raise AdapterNotFoundError(f"adapter {lora!r} is not registered")
        if blocks_for(self.max_model_len, self.config.block_size) > self.allocator.num_blocks:
            raise CapacityError("the KV cache cannot hold one full-length sequence")
        if self.scheduler.find(request_id) is not None:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        seq = Sequence(request_id, list(prompt_token_ids), params, lora, prefill_only=prefill_only)
        seq.output_token_ids = generated
        seq.cache_namespace = cache_namespace(lora, cache_salt)
        self.requests.track(seq)
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> bool:
        seq = self.scheduler.find(request_id)
        if seq is None:
            return False
        self.scheduler.finish(seq, "abort")
        self.requests.forget(request_id)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[StepOutput]:
        """Run one step.  A row whose logits are not finite ends its request alone with an
        error; a step that raises ends exactly its requests with one (``failures.py``), unless
        the error is fatal (CUDA, out of memory), which propagates."""
        batch = self.scheduler.schedule()
        if batch is None or not batch.seqs:
            return []
        try:
            outputs = self._run(batch)
        except Exception as e:
            if is_fatal(e):
                raise
            return self.failures.fail_step(batch, e)
        self.failures.step_succeeded()
        return outputs

    def _run(self, batch: ScheduledBatch) -> list[StepOutput]:
        for name, slot in batch.adapter_loads:
            self.lora_weights.load(slot, self.adapters[name])
        inp = self.runner.prepare(
            batch.seqs, batch.is_prefill, batch.num_new_tokens, batch.num_prefill_seqs
        )
        logits, prompt_scores = self.runner.execute(inp)
        bad = nonfinite_requests(inp.seqs, logits, prompt_scores)
        for seq, scored in prompt_scores:
            if seq not in bad:
                seq.prompt_logprobs += scored
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            if seq not in bad:
                self.scheduler.register_computed(seq, seq.num_cached + n)
        for seq, n in inp.partial:  # a chunk short of the prompt's end: nothing to sample yet
            if seq not in bad:
                seq.num_cached += n
        outputs = [self.failures.fail_nonfinite(seq) for seq in batch.seqs if seq in bad]
        seqs = inp.seqs
        if bad:  # sample the healthy rows alone: each row's draw depends on its row only
            rows = [i for i, s in enumerate(seqs) if s not in bad]
            seqs = [seqs[i] for i in rows]
            logits = logits[torch.tensor(rows, dtype=torch.long, device=logits.device)]
        if not seqs:
            return outputs
        gens = [self.requests.generator_for(s) for s in seqs]
        shaped = self.grammars.mask(apply_penalties(logits, seqs, self.requests.eos_ids), seqs)
        over = self.grammars.take_overruns()
        if over:  # their grammars ran over the budget: they end, the others sample
            outputs += self._fail_constraints(s for s in seqs if s.request_id in over)
            rows = [i for i, s in enumerate(seqs) if s.request_id not in over]
            if not rows:
                return outputs
            seqs, gens = [seqs[i] for i in rows], [gens[i] for i in rows]
            index = torch.tensor(rows, dtype=torch.long, device=logits.device)
            logits, shaped = logits[index], shaped[index]
        tokens = sample(shaped, [s.params for s in seqs], gens)
        self.grammars.advance([s.request_id for s in seqs], tokens)  # one wait for the batch
        logprobs = compute_logprobs(logits, seqs, tokens)
        self.last_logits = {
            s.request_id: row for s, row in zip(seqs, logits, strict=False)
        }  # for tests/debug
        outputs += [
            self.requests.append(seq, tok, lp)
            for seq, tok, lp in zip(seqs, tokens, logprobs, strict=True)
        ]
        over = self.grammars.take_overruns()  # advancing by the sampled token
        return outputs + self._fail_constraints(
            s for s in seqs if s.request_id in over and not s.finished
        )

    def _fail_constraints(self, seqs: Iterable[Sequence]) -> list[StepOutput]:
        message = overrun_message(self.grammars.budget_s)  # the tenant's constraint: a 400
        return [self.failures.fail_request(seq, message, 400) for seq in seqs]
