"""``Publisher``: what a worker reports about its requests on the bus: token deltas to the
gateway's stream, progress to the scheduler's usage subject, and errors."""

from __future__ import annotations

from loraplex.acked import AckedSender
from loraplex.bus import Bus
from loraplex.engine.outputs import StepOutput
from loraplex.protocol import (
    TOKEN_SNAPSHOT_EVERY,
    RequestError,
    RequestProgress,
    Subjects,
    TokenDelta,
)
from loraplex.terminal import TERMINAL_EVENTS
from loraplex.worker.active import Active


class Publisher:
    """Owns the subjects a worker reports requests on: ``Subjects.stream(gateway)`` for tokens
    and errors, ``Subjects.USAGE`` for progress (signed with ``worker_id``).  A request's last
    message to its gateway (final delta, error) is delivered at least once (``terminal``)."""

    def __init__(self, bus: Bus, worker_id: str) -> None:
        self._bus = bus
        self._id = worker_id
        self.terminal = AckedSender(bus)

    async def tokens(self, req: Active, out: StepOutput) -> None:
        """One step's new tokens of ``req`` to its gateway, counted into ``req.generated``, and
        the matching progress (with their ids) to the scheduler.  The progress goes first: the
        bus keeps one connection's order, so the scheduler knows every token the gateway can
        have, and a migrated request's replay (``Active.resumed``, with the text of those tokens
        from offset 0) fills what the gateway lacks."""
        req.generated += len(out.new_token_ids)
        req.token_ids.extend(out.new_token_ids)
        sub = req.submit
        # Now and then all the ids so far, which repairs the gap of a lost report: every
        # TOKEN_SNAPSHOT_EVERY tokens, then every quarter of the count (O(n) bytes in all).
        snapshot = req.generated >= req.next_snapshot and not out.finished
        if snapshot:
            req.next_snapshot = max(req.generated + TOKEN_SNAPSHOT_EVERY, req.generated * 5 // 4)
        await self.progress(
            req,
            "finished" if out.finished else "tokens",
            new_tokens=len(out.new_token_ids),
            token_ids=list(out.new_token_ids),
            all_token_ids=list(req.token_ids) if snapshot else None,
        )
        if req.resumed and not req.replayed:
            req.replayed = True
            await self._bus.publish(
                Subjects.stream(sub.gateway_id),
                TokenDelta(
                    sub.request_id,
                    list(req.resumed),
                    out.resumed_text or "",
                    prompt_tokens=len(sub.prompt_token_ids),
                    completion_tokens=len(req.resumed),
                    text_start=0,
                ),
            )
        delta = TokenDelta(
            sub.request_id,
            out.new_token_ids,
            out.new_text,
            out.finish_reason,
            prompt_tokens=len(sub.prompt_token_ids),
            completion_tokens=req.generated,
            logprobs=out.logprobs,
            prompt_logprobs=out.prompt_logprobs,
            cached_tokens=req.cached_tokens,
            text_start=out.text_start,
            full_text=out.full_text,
        )
        if out.finished:
            self.terminal.send(Subjects.stream(sub.gateway_id), delta)
        else:
            await self._bus.publish(Subjects.stream(sub.gateway_id), delta)

    async def progress(
        self,
        req: Active,
        event: str,
        new_tokens: int = 0,
        message: str = "",
        suspect: str = "",
        token_ids: list[int] | None = None,
        all_token_ids: list[int] | None = None,
    ) -> None:
        sub = req.submit
        report = RequestProgress(
            sub.request_id,
            sub.tenant,
            self._id,
            event,
            new_tokens=new_tokens,
            prompt_tokens=len(sub.prompt_token_ids),
            completion_tokens=req.generated,
            decode_worker=req.decode_worker,
            message=message,
            suspect=suspect,
            token_ids=token_ids or [],
            all_token_ids=all_token_ids,
        )
        if event in TERMINAL_EVENTS:  # the scheduler's last word on it: at least once
            self.terminal.send(Subjects.USAGE, report)
        else:
            await self._bus.publish(Subjects.USAGE, report)

    async def fail(
        self, req: Active, code: int, message: str, retryable: bool, suspect: str = ""
    ) -> None:
        """Report a request we cannot serve: retryable failures go back to the scheduler only
        (``suspect``: the peer worker to blame, which the scheduler avoids for the retry)."""
        if not retryable:
            sub = req.submit
            error = RequestError(sub.request_id, code, message)
            self.terminal.send(Subjects.stream(sub.gateway_id), error)
        event = "failed" if retryable else "error"
        await self.progress(req, event, message=message, suspect=suspect)
