"""Structured outputs in the engine: one xgrammar matcher per constrained request.

Before sampling, each constrained row's logits are masked to the tokens its grammar allows
(``-inf`` elsewhere); after sampling, the matcher advances by the chosen token.  The matcher only
depends on the tokens generated so far, so it survives preemption (outputs are kept), a decode
worker rebuilds it from the first token a prefill worker sampled, and a request migrated to another
worker rebuilds it from every token generated before (``track(..., generated)``).  Logprobs stay those of the
raw distribution (the mask is applied to a copy), as vLLM reports them by default.

xgrammar is imported on first use: engines that never see a constrained request do not need it.

A grammar's work per token is bounded (``LORAPLEX_GRAMMAR_BUDGET_MS``).  Some constraints compile
at once and then explode while matching: a regex of nested counted repeats such as
``((a{0,50}){0,50}){0,50}`` took 2.9 s to mask one token after 30 tokens, nested stars 1.6 s per
token.  That work ran inside the engine step, so one tenant's constraint stalled every request in
the batch.  Masking and advancing now run on a thread pool (xgrammar releases the GIL) and the
step waits at most the budget: a request over it is given up (``take_overruns``; the engine ends
it with a 400) while its call finishes in the background, and the step goes on without it.  So is
one whose grammar work averages over a tenth of the budget per token (``AVERAGE_SHARE``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as Sequence_
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import torch

from loraplex import env
from loraplex.engine.sequence import Sequence
from loraplex.errors import InvalidRequestError
from loraplex.structured_outputs import StructuredOutputsParams

log = logging.getLogger(__name__)

# Threads for grammar work: a given-up call keeps its thread until it returns, so there are more
# than one step's constrained rows need (a tenant's stuck calls are bounded by its requests).
GRAMMAR_THREADS = 64


# A grammar whose every token stays under the budget can still cost its batch that much per step
# (red team: rules nesting repeats took 10 s to reach 200 ms on one token).  So its average per
# token, over the tokens after the first few, may be at most this share of the budget: legitimate
# grammars take well under a millisecond per token.
AVERAGE_SHARE = 0.1
AVERAGE_AFTER = 8  # tokens before the average counts (the first ones warm xgrammar's caches)


def overrun_message(budget_s: float) -> str:
    return (
        "the output constraint is too expensive to enforce: its grammar work took more than "
        f"{budget_s * 1e3:.0f} ms for one token, or {budget_s * AVERAGE_SHARE * 1e3:.0f} ms per "
        "token on average (simplify its schema, regex or grammar)"
    )


def _timed(call: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``call(*args)`` and the seconds it ran (in its thread: not the wait for one)."""
    start = time.perf_counter()
    return call(*args), time.perf_counter() - start


class GrammarConstraints:
    """The compiled grammars (cached by xgrammar) and the live matchers, by request id."""

    def __init__(
        self,
        model_dir: str | Path,
        vocab_size: int,
        stop_ids: set[int],
        budget_s: float | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.vocab_size = vocab_size  # the model's logits width (may exceed the tokenizer's)
        self.stop_ids = sorted(stop_ids)
        # the most one request's grammar may take per token (mask or advance)
        self.budget_s = env.GRAMMAR_BUDGET_MS.get() / 1e3 if budget_s is None else budget_s
        self._compiler: Any = None
        self._lock = threading.Lock()
        self._matchers: dict[str, Any] = {}
        self._pool: ThreadPoolExecutor | None = None  # started by the first constrained step
        self._overrun: set[str] = set()  # given up since the engine last asked
        self._spent: dict[str, list[float]] = {}  # request id -> [grammar seconds, tokens]
        self._advanced: dict[str, tuple[int, bool]] = {}  # by ``advance``: (token, accepted)

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(GRAMMAR_THREADS, thread_name_prefix="loraplex-grammar")
        return self._pool

    def _give_up(self, request_id: str) -> None:
        self._matchers.pop(request_id, None)  # its late call still holds the matcher
        spent = self._spent.pop(request_id, [0.0, 0.0])
        self._overrun.add(request_id)
        log.warning(
            "request %s: its output constraint is too expensive (budget %.0f ms per token; "
            "%.0f ms over %d tokens so far); ending it",
            request_id, self.budget_s * 1e3, spent[0] * 1e3, spent[1],
        )  # fmt: skip

    def _charge(self, request_id: str, seconds: float, token: bool) -> bool:
        """Count grammar work; False when the request's average per token is over its share."""
        spent = self._spent.setdefault(request_id, [0.0, 0.0])
        spent[0] += seconds
        spent[1] += token
        tokens = spent[1]
        return tokens < AVERAGE_AFTER or spent[0] <= tokens * self.budget_s * AVERAGE_SHARE

    def take_overruns(self) -> set[str]:
        """The requests given up since the last call: over the budget, or their grammar raised.
        The engine ends each with ``overrun_message`` (a 400) and samples nothing for it."""
        out, self._overrun = self._overrun, set()
        return out

    def load_compiler(self) -> None:
        """Build the compiler now (seconds: it imports transformers and reads the tokenizer), so
        that a worker's time limit on a compile counts the compile alone."""
        self._xgr_compiler()

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
        if generated:
            replay: Future[bool] = self._threads().submit(_accept_all, matcher, generated)
            try:
                ok = replay.result(timeout=self.budget_s * len(generated))
            except FutureTimeout:
                raise InvalidRequestError(overrun_message(self.budget_s)) from None
            if not ok:
                raise InvalidRequestError(
                    f"request {request_id}: a generated token breaks its output constraint"
                )
        self._matchers[request_id] = matcher

    def forget(self, request_id: str) -> None:
        self._matchers.pop(request_id, None)
        self._spent.pop(request_id, None)
        self._advanced.pop(request_id, None)

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
        row_of = {seqs[i].request_id: i for i in rows}
        ran = self._bounded(
            {
                rid: (self._matchers[rid].fill_next_token_bitmask, bitmask, i)
                for rid, i in row_of.items()
            }
        )  # a row given up is sampled by nobody: see the engine
        for rid, (_, seconds) in ran.items():
            self._charge(rid, seconds, False)  # the average is judged when it advances
        filled = [row_of[rid] for rid in ran]
        out = logits.clone()
        if filled:
            xgr.apply_token_bitmask_inplace(out, bitmask.to(out.device), indices=sorted(filled))
        return out

    def advance(self, request_ids: Sequence_[str], tokens: Sequence_[int]) -> None:
        """Advance every constrained one of ``request_ids`` by its sampled token, all at once (in
        parallel, one wait for the batch, not a thread round trip per request); ``accept`` then
        reads each outcome."""
        token_of = {
            rid: token
            for rid, token in zip(request_ids, tokens, strict=True)
            if rid in self._matchers
        }
        ran = self._bounded(
            {rid: (self._matchers[rid].accept_token, token) for rid, token in token_of.items()}
        )
        for rid, (accepted, seconds) in ran.items():
            if self._charge(rid, seconds, True):
                self._advanced[rid] = (token_of[rid], accepted)
            else:
                self._give_up(rid)  # every token under the budget, but too many near it

    def _bounded(self, calls: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, float]]:
        """Run each request's ``(function, *args)`` on the pool, waiting at most the budget for
        all of them; the request whose call is late or raised is given up.  The others' result
        and the seconds their call ran."""
        if not calls:
            return {}
        pool = self._threads()
        jobs = {pool.submit(_timed, *call): rid for rid, call in calls.items()}
        done, late = wait(jobs, timeout=self.budget_s)
        ran = {}
        for job, rid in jobs.items():
            if job in late or job.exception() is not None:  # over the budget, or xgrammar refused
                self._give_up(rid)
            else:
                ran[rid] = job.result()
        return ran

    def accept(self, request_id: str, token: int) -> bool:
        """Advance a constrained request by ``token`` (unless ``advance`` just did); True when its
        output is complete (the token was a stop token where the grammar accepts)."""
        matcher = self._matchers.get(request_id)
        if matcher is None:
            return False
        outcome = self._advanced.pop(request_id, None)
        if outcome is not None and outcome[0] == token:
            accepted = outcome[1]
        else:
            self.advance([request_id], [token])
            outcome = self._advanced.pop(request_id, None)
            if outcome is None:
                return False  # given up: the engine ends it
            accepted = outcome[1]
        if not accepted:
            # Cannot happen with the mask applied; end this output rather than fail the step
            # (and with it every request of the batch).
            log.warning("request %s: token %d breaks its grammar; ending it", request_id, token)
            return True
        return bool(matcher.is_terminated())


def _accept_all(matcher: Any, tokens: Sequence_[int]) -> bool:
    """Advance ``matcher`` over ``tokens``; False at the first it refuses."""
    return all(matcher.accept_token(t) for t in tokens)
