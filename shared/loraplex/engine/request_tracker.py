"""The engine's per-request state, from ``track`` to ``forget``, and what each sampled token does.

A request is tracked when it is added (or its K/V arrive from a prefill worker): its grammar
matcher, its generator when seeded, its incremental detokenizer.  A request resumed after its
worker died arrives with the tokens it had generated as its first outputs: the matcher and the
detokenizer are advanced over them, and its generator is seeded by (seed, token index), so it
draws what it would have drawn.  Each sampled token goes
through ``append``, which checks the stop conditions and finishes the request, or ends a
prefill-only request with its K/V exported for the hand-over.

This detokenizer is the request's only one: its text (stop strings cut) is what the gateway shows,
placed by character offset (``StepOutput.text_start``), and a resumed request's first output also
carries the text of its earlier tokens (``resumed_text``) for the worker's replay to the gateway.
"""

from __future__ import annotations

import torch

from loraplex.engine.logprobs import TokenLogprobs
from loraplex.engine.outputs import KVHandoff, StepOutput
from loraplex.engine.sampler import position_seed
from loraplex.engine.scheduler import Scheduler
from loraplex.engine.sequence import Sequence
from loraplex.engine.structured import GrammarConstraints
from loraplex.kvcache.paged_cache import PagedKVCache
from loraplex.sampling_params import SamplingParams
from loraplex.text.detokenizer import IncrementalDetokenizer
from loraplex.text.tokenizer import Tokenizer


class RequestTracker:
    """Owns the state of each live request, by request id: the generator of a seeded request
    and the incremental detokenizer, plus the shared generator of unseeded ones; the grammar
    matchers are the ``grammars``' (tracked and forgotten here).

    It finishes requests in the engine's ``scheduler`` and exports hand-over K/V from its
    ``kv_cache``; it frees nothing else (blocks go back through the scheduler).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        grammars: GrammarConstraints,
        eos_ids: set[int],
        scheduler: Scheduler,
        kv_cache: PagedKVCache,
        max_model_len: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.grammars = grammars
        self.eos_ids = eos_ids
        self.scheduler = scheduler
        self.kv_cache = kv_cache
        self.max_model_len = max_model_len
        self.device = device
        self._generators: dict[str, torch.Generator] = {}
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._resumed_text: dict[str, str] = {}  # until a resumed request's first output
        self._shared_gen = torch.Generator(device=device).manual_seed(seed)

    def track(self, seq: Sequence) -> None:
        """Set up ``seq``'s state; its grammar may refuse it (nothing is kept then)."""
        params, request_id = seq.params, seq.request_id
        generated = seq.output_token_ids  # non-empty for a request resumed after a migration
        self.grammars.track(request_id, params.structured_outputs, generated)  # may refuse
        if params.seed is not None:
            # Seeded per token in generator_for; created once so steps do not allocate it.
            self._generators[request_id] = torch.Generator(device=self.device)
        detok = IncrementalDetokenizer(
            self.tokenizer,
            params.stop if params.min_tokens <= 1 else (),
            params.skip_special_tokens,
            context_ids=seq.prompt_token_ids,
            include_stop=params.include_stop_str_in_output,
        )
        for n, token in enumerate(generated, 1):  # replayed: stops across the resume point match
            _stop_strings_from(detok, params, n)
            detok.append(token)
        self._detok[request_id] = detok
        if generated:
            self._resumed_text[request_id] = detok.text

    def forget(self, request_id: str) -> None:
        self.grammars.forget(request_id)
        self._generators.pop(request_id, None)
        self._detok.pop(request_id, None)
        self._resumed_text.pop(request_id, None)

    def generator_for(self, seq: Sequence) -> torch.Generator:
        """A seeded request draws its n-th token from a generator seeded by (seed, n): the
        same tokens whatever its batch-mates, and whichever worker draws which token (a
        prefill worker samples the first, a decode worker the rest)."""
        gen = self._generators.get(seq.request_id)
        if gen is None or seq.params.seed is None:
            return self._shared_gen
        return gen.manual_seed(position_seed(seq.params.seed, len(seq.output_token_ids)))

    def append(
        self, seq: Sequence, token: int, logprobs: TokenLogprobs | None = None, cached: bool = True
    ) -> StepOutput:
        """Add a sampled token to ``seq`` and say what it produced; a stop condition finishes
        the request, and a prefill-only request ends with its K/V ready to ship."""
        if cached:
            seq.num_cached = seq.num_tokens
        seq.output_token_ids.append(token)
        p = seq.params
        detok = self._detok[seq.request_id]
        resumed_text = self._resumed_text.pop(seq.request_id, None)
        text_start = len(detok.text)
        _stop_strings_from(detok, p, len(seq.output_token_ids))
        text = detok.append(token)
        complete = self.grammars.accept(seq.request_id, token)
        reason, stop_reason = None, None
        if token in p.stop_token_ids:
            reason, stop_reason = "stop", token
        elif (token in self.eos_ids and not p.ignore_eos) or complete:
            reason = "stop"
        elif detok.stopped is not None:
            reason, stop_reason = "stop", detok.stopped
        elif len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        handoff = None
        full_text = None
        prompt_lps = None
        if p.prompt_logprobs is not None and len(seq.output_token_ids) == 1:
            prompt_lps = list(seq.prompt_logprobs)
        if reason is not None:
            text += detok.flush()
            full_text = detok.text
            self.scheduler.finish(seq, reason)
            seq.stop_reason = stop_reason
            self.forget(seq.request_id)
        elif seq.prefill_only:
            # The decode worker re-detokenizes from the first token; only the K/V travel.
            handoff = KVHandoff(
                self.kv_cache.export_blocks(seq.block_table),
                token,
                seq.num_cached,
                logprobs,
                prompt_lps,
            )
            self.scheduler.finish(seq, "handoff")
            self.forget(seq.request_id)
            text = ""
        return StepOutput(
            seq.request_id,
            [token],
            text,
            reason is not None,
            reason,
            stop_reason,
            handoff,
            [logprobs] if logprobs is not None else None,
            prompt_lps,
            num_cached_tokens=seq.num_cached_tokens if seq.num_cached_tokens >= 0 else None,
            text_start=text_start,
            resumed_text=resumed_text,
            full_text=full_text,
        )


def _stop_strings_from(detok: IncrementalDetokenizer, params: SamplingParams, n: int) -> None:
    """Stop strings are looked for from the ``min_tokens``-th generated token on (vLLM): turn
    them on when token ``n`` (1-based) is that one."""
    if n == params.min_tokens and params.stop:
        detok.stop = params.stop
