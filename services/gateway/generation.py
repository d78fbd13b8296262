"""One submitted request as a route sees it: text deltas in, a cancel out if it is abandoned.

The gateway does not detokenize completions: the serving worker's detokenizer is the only one
(``TokenDelta.text``, stop strings already cut and the request finished on them, so streaming and
non-streaming answers are the same text).  Tokens and text are placed by their offsets
(``completion_tokens``, ``text_start``): what a migrated request's new worker replays and the
gateway already has is dropped.  The tokenizer only names tokens for ``logprobs``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from loraplex.gateway.errors import RequestFailedError, RequestTimeoutError
from loraplex.gateway.metrics import GatewayMetrics
from loraplex.gateway.prepare import Echo
from loraplex.gateway.streams import StreamMessage
from loraplex.gateway.token_info import (
    TokenInfo,
    prompt_infos,
    token_info,
    trimmed,
    unscored,
    with_itself,
)
from loraplex.protocol import RequestError, TokenDelta
from loraplex.text.tokenizer import Tokenizer
from loraplex.timeouts import wait_for
from loraplex.token_logprobs import TokenLogprobs


@dataclass(frozen=True)
class TextDelta:
    text: str
    finish_reason: str | None = None  # set on the last delta of a generation
    logprobs: list[TokenInfo] | None = None  # tokens shown since the previous delta (if asked)
    token_ids: tuple[int, ...] = ()  # the completion's tokens since the previous delta


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose K/V came from a worker's prefix cache

    @classmethod
    def total(cls, prompts: list[Generation], choices: list[Generation]) -> Usage:
        """``prompts``: one generation per prompt (its prompt and cached tokens count once);
        ``choices``: every generation (their completion tokens add up)."""
        return cls(
            sum(g.prompt_tokens for g in prompts),
            sum(g.completion_tokens for g in choices),
            sum(g.cached_tokens for g in prompts),
        )

    def to_json(self) -> dict[str, Any]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class Generation:
    """Reads one request's queue; ``aclose`` must always be called (it cancels if unfinished)."""

    def __init__(
        self,
        *,
        request_id: str,
        tenant: str,
        prompt_ids: list[int],
        queue: asyncio.Queue[StreamMessage],
        tokenizer: Tokenizer,
        timeout_s: float,
        metrics: GatewayMetrics,
        on_close: Callable[[Generation], Awaitable[None]],
        arrival: float,
        echo: Echo | None = None,
    ) -> None:
        self.request_id = request_id
        self.tenant = tenant
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        # The completion's token ids as received, in order; None once a delta was lost (a gap):
        # sent with a resubmission so that a new scheduler leader can migrate the request.
        self._token_ids: list[int] | None = []
        self.cached_tokens = 0  # as the serving worker reports it (TokenDelta.cached_tokens)
        self.finish_reason: str | None = None
        self.outcome = "cancelled"  # for metrics: a finish reason, "error", "timeout", "cancelled"
        self.upstream_done = False  # the workers sent their last message for it
        self.cancel_reason = "client disconnected"
        self._queue = queue
        self._tok = tokenizer
        self._text_end = 0  # characters of the completion's text received (TokenDelta.text_start)
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._on_close = on_close
        self._arrival = arrival
        self._last_token_at: float | None = None
        self._done = False
        self._closed = False
        self.logprobs: list[TokenInfo] | None = None  # every shown token's, when asked for
        self._pending: list[TokenInfo] = []  # tokens whose text has not been shown yet
        self._pending_ids: list[int] = []  # ids of the tokens since the last delta given out
        self._echo = echo  # shown before the first generated text, then None
        # The workers' prompt logprobs (tokens 1..), when asked for: on the first delta only.
        self._prompt_scored: list[TokenLogprobs] | None = None
        self._prompt_infos: list[TokenInfo] | None = None
        self._prompt_ids = prompt_ids
        self._prompt_only = echo is not None and echo.prompt_only

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens)

    @property
    def prompt_ids(self) -> list[int]:
        return self._prompt_ids

    @property
    def received_token_ids(self) -> list[int] | None:
        """Every completion token id received so far, or None when a delta went missing."""
        ids = self._token_ids
        return list(ids) if ids is not None and len(ids) == self.completion_tokens else None

    def _keep_ids(self, token_ids: list[int], gap: bool) -> None:
        if self._token_ids is None or not token_ids:
            return
        if gap:  # tokens past a lost delta: the ids can no longer be placed by index
            self._token_ids = None
        else:
            self._token_ids += token_ids

    @property
    def duration_s(self) -> float:
        return time.monotonic() - self._arrival

    async def next(self) -> TextDelta | None:
        """The next non-empty text delta (or the final one), None after the end.

        Raises RequestFailedError (a worker's RequestError) or RequestTimeoutError (silence).
        """
        while not self._done:
            msg = await self._receive()
            if isinstance(msg, RequestError):
                self._done = self.upstream_done = True
                self.outcome = "error"
                raise RequestFailedError(msg.code, msg.message)
            delta = self._apply(msg)
            if delta is not None:
                return delta
        return None

    async def collect(self, first: TextDelta | None = None) -> str:
        """The whole text (non-streaming answers), starting with an already read ``first``."""
        parts = [first.text] if first is not None else []
        while (delta := await self.next()) is not None:
            parts.append(delta.text)
        return "".join(parts)

    async def aclose(self) -> None:
        """Release the queue; tell the scheduler to cancel when the workers are not done."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._on_close(self)

    async def _receive(self) -> StreamMessage:
        try:
            return await wait_for(self._queue.get(), self._timeout_s)
        except asyncio.TimeoutError:
            self._done = True
            self.cancel_reason = "timed out in the gateway"
            self.outcome = "timeout"
            raise RequestTimeoutError(
                f"request {self.request_id} got no answer from the serving workers within "
                f"{self._timeout_s:g}s"
            ) from None

    def _apply(self, msg: TokenDelta) -> TextDelta | None:
        if msg.cached_tokens:  # the prefill's prefix-cache hits (a re-dispatch may change it)
            self.cached_tokens = min(msg.cached_tokens, self.prompt_tokens)
        if msg.prompt_logprobs is not None and self._prompt_scored is None:
            self._prompt_scored = msg.prompt_logprobs
        echoed = self._take_echo(msg)
        if self._prompt_only:  # echo with max_tokens 0: the prompt and its logprobs, no token
            self._done = True
            self.upstream_done = msg.finish_reason is not None
            self.finish_reason = self.outcome = "length"
            return TextDelta(echoed, "length", self._take_logprobs())
        # ``completion_tokens`` counts the worker's tokens up to and including this delta.  After a
        # re-dispatch the new worker starts again from the first token: skip what was already shown.
        first_index = msg.completion_tokens - len(msg.token_ids)
        skip = max(0, self.completion_tokens - first_index) if msg.completion_tokens else 0
        token_ids = msg.token_ids[skip:]
        self._keep_ids(
            token_ids, gap=not msg.completion_tokens or first_index > self.completion_tokens
        )
        logprobs = msg.logprobs[skip:] if msg.logprobs is not None else None
        self._observe_latency(len(token_ids))
        self.completion_tokens += len(token_ids)
        self._pending_ids += token_ids
        if logprobs is not None:
            self._pending += (token_info(self._tok, lp) for lp in logprobs[: len(token_ids)])
        text = echoed + self._new_text(msg)
        if msg.finish_reason is not None:  # the worker ended it (a stop string too: "stop")
            # A delta lost on the way (core NATS is at-most-once): the last one says it all.
            if msg.full_text is not None and len(msg.full_text) > self._text_end:
                text += msg.full_text[self._text_end :]
                self._text_end = len(msg.full_text)
            self.completion_tokens = max(self.completion_tokens, msg.completion_tokens)
            self._done = self.upstream_done = True
            self.finish_reason = self.outcome = msg.finish_reason
            return TextDelta(text, self.finish_reason, self._take_logprobs(), self._take_ids())
        if not text:
            return None
        return TextDelta(text, None, self._take_logprobs(), self._take_ids())

    def _take_ids(self) -> tuple[int, ...]:
        taken, self._pending_ids = tuple(self._pending_ids), []
        return taken

    def _new_text(self, msg: TokenDelta) -> str:
        """The part of ``msg.text`` past what was received: a replay (``text_start`` 0 again)
        repeats characters the client already has.  Text past a gap (a delta was lost) is held
        back: the last delta's ``full_text`` fills the gap and brings it."""
        if msg.text_start > self._text_end:
            return ""
        end = msg.text_start + len(msg.text)
        new = msg.text[max(0, self._text_end - msg.text_start) :]
        self._text_end = max(self._text_end, end)
        return new

    def _take_echo(self, msg: TokenDelta) -> str:
        """The prompt's text (and, with ``logprobs``, its tokens' logprobs, queued) on the first
        delta of an echo."""
        echo, self._echo = self._echo, None
        if echo is None:
            return ""
        infos = self.prompt_logprobs()
        if echo.logprobs is not None and infos is not None:
            shown = [with_itself(trimmed(i, echo.logprobs)) for i in infos]
            self._pending = [*shown, *self._pending]
        return echo.text

    def prompt_logprobs(self) -> list[TokenInfo] | None:
        """Every prompt token (the first unscored) with all the alternatives the workers sent;
        None when none came (not asked for, or lost with the delta that carried them)."""
        if self._prompt_scored is None:
            return None
        if self._prompt_infos is None:  # decoded once, when an answer first asks
            self._prompt_infos = prompt_infos(self._tok, self._prompt_ids, self._prompt_scored)
        return self._prompt_infos

    def prompt_from(self, start: int) -> list[TokenInfo]:
        """The prompt's tokens from ``start`` on: scored when the workers sent their logprobs,
        else with null logprobs (none asked for, or lost with their delta)."""
        scored = self.prompt_logprobs()
        if scored is not None:
            return scored[start:]
        return [unscored(self._tok, t) for t in self._prompt_ids[start:]]

    def _take_logprobs(self) -> list[TokenInfo] | None:
        if not self._pending:
            return None
        taken, self._pending = self._pending, []
        if self.logprobs is None:
            self.logprobs = []
        self.logprobs += taken  # in place: a copy per delta would be quadratic in the tokens
        return taken

    def _observe_latency(self, num_tokens: int) -> None:
        if not num_tokens:
            return
        now = time.monotonic()
        if self._last_token_at is None:
            self._metrics.ttft.observe(now - self._arrival)
        else:
            self._metrics.itl.observe((now - self._last_token_at) / num_tokens)
        self._last_token_at = now
