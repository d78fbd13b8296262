"""Structured outputs in the engine: one xgrammar matcher per constrained request.

Before sampling, each constrained row's logits are masked to the tokens its grammar allows
(``-inf`` elsewhere); after sampling, the matcher advances by the chosen token.  The matcher only
depends on the tokens generated so far, so it survives preemption (outputs are kept), a decode
worker rebuilds it from the first token a prefill worker sampled, and a request migrated to another
worker rebuilds it from every token generated before (``track(..., generated)``).  Logprobs stay those of the
raw distribution (the mask is applied to a copy), as vLLM reports them by default.

xgrammar is imported on first use: engines that never see a constrained request do not need it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence as Sequence_
from pathlib import Path
from typing import Any

import torch

from loraplex.engine.sequence import Sequence
from loraplex.errors import InvalidRequestError
from loraplex.structured_outputs import StructuredOutputsParams

log = logging.getLogger(__name__)


class GrammarConstraints:
    """The compiled grammars (cached by xgrammar) and the live matchers, by request id."""

    def __init__(self, model_dir: str | Path, vocab_size: int, stop_ids: set[int]) -> None:
        self.model_dir = Path(model_dir)
        self.vocab_size = vocab_size  # the model's logits width (may exceed the tokenizer's)
        self.stop_ids = sorted(stop_ids)
        self._compiler: Any = None
        self._lock = threading.Lock()
        self._matchers: dict[str, Any] = {}

    def _xgr_compiler(self) -> Any:
        with self._lock:  # built once, on first use: importing transformers takes seconds
            if self._compiler is None:
                import xgrammar as xgr
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(self.model_dir)
                info = xgr.TokenizerInfo.from_huggingface(
                    tok, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def compile(self, so: StructuredOutputsParams) -> Any:
        """The compiled grammar (InvalidRequestError if it won't compile).  Thread-safe and
        cached: workers call it off the engine loop first, so ``track`` finds it ready."""
        compiler = self._xgr_compiler()
        try:
            if so.kind == "json":
                return compiler.compile_json_schema(so.spec, any_whitespace=False)
            if so.kind == "json_object":  # OpenAI's json_object: an object, not any JSON value
                return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if so.kind == "regex":
                return compiler.compile_regex(so.spec)
            return compiler.compile_grammar(so.ebnf() or so.spec)
        except (RuntimeError, ValueError) as e:
            raise so.error(e) from e

    def track(
        self,
        request_id: str,
        so: StructuredOutputsParams | None,
        generated: Sequence_[int] = (),
    ) -> None:
        """Start a matcher for a constrained request (InvalidRequestError if it won't compile),
        advanced over the tokens it already ``generated`` (a request resumed on another worker:
        the matcher depends only on them)."""
        if so is None:
            return
        import xgrammar as xgr

        matcher = xgr.GrammarMatcher(self.compile(so))
        for token in generated:
            if not matcher.accept_token(token):
                raise InvalidRequestError(
                    f"request {request_id}: generated token {token} breaks its output constraint"
                )
        self._matchers[request_id] = matcher

    def forget(self, request_id: str) -> None:
        self._matchers.pop(request_id, None)

    def constrained(self, request_id: str) -> bool:
        return request_id in self._matchers

    def mask(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """logits: [N, V] fp32, row i for ``seqs[i]`` -> logits with every token a constrained
        row's grammar forbids at -inf (a copy when any row is constrained)."""
        rows = [i for i, s in enumerate(seqs) if s.request_id in self._matchers]
        if not rows:
            return logits
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(len(seqs), self.vocab_size)  # [N, ceil(V / 32)]
        for i in rows:
            self._matchers[seqs[i].request_id].fill_next_token_bitmask(bitmask, i)
        out = logits.clone()
        xgr.apply_token_bitmask_inplace(out, bitmask.to(out.device), indices=rows)
        return out

    def accept(self, request_id: str, token: int) -> bool:
        """Advance a constrained request by ``token``; True when its output is complete (the
        token was a stop token where the grammar accepts)."""
        matcher = self._matchers.get(request_id)
        if matcher is None:
            return False
        if not matcher.accept_token(token):
            # Cannot happen with the mask applied; end this output rather than fail the step
            # (and with it every request of the batch).
            log.warning("request %s: token %d breaks its grammar; ending it", request_id, token)
            return True
        return bool(matcher.is_terminated())
