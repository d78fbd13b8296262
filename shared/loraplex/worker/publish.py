"""What a worker reports about its requests, as methods of ``Worker``: token deltas to the
gateway's stream, progress to the scheduler's usage subject, and errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraplex.engine.outputs import StepOutput
from loraplex.protocol import RequestError, RequestProgress, Subjects, TokenDelta
from loraplex.worker.logprobs_wire import list_to_wire

if TYPE_CHECKING:
    from loraplex.worker.runtime import Active, Worker


class PublishMixin:
    """Publishing of engine outputs, progress and failures (mixed into ``Worker``)."""

    async def publish_outputs(self: Worker, outputs: list[StepOutput]) -> None:
        assert self.bus is not None
        for out in outputs:
            req = self.active.get(out.request_id)
            if req is None:
                continue
            if out.error is not None:  # the engine ended this request alone; the rest go on
                await self.fail(req, out.error_code, out.error, retryable=False)
                self.release(out.request_id)
                continue
            if out.handoff is not None:
                self.spawn(self._ship_kv(self, req, out.handoff))
                continue
            req.generated += len(out.new_token_ids)
            sub = req.submit
            await self.bus.publish(
                Subjects.stream(sub.gateway_id),
                TokenDelta(
                    sub.request_id,
                    out.new_token_ids,
                    out.new_text,
                    out.finish_reason,
                    prompt_tokens=len(sub.prompt_token_ids),
                    completion_tokens=req.generated,
                    logprobs=list_to_wire(out.logprobs),
                    prompt_logprobs=list_to_wire(out.prompt_logprobs),
                ),
            )
            await self.progress(
                req, "finished" if out.finished else "tokens", new_tokens=len(out.new_token_ids)
            )
            if out.finished:
                self.release(out.request_id)

    async def progress(
        self: Worker,
        req: Active,
        event: str,
        new_tokens: int = 0,
        message: str = "",
        suspect: str = "",
    ) -> None:
        assert self.bus is not None
        sub = req.submit
        await self.bus.publish(
            Subjects.USAGE,
            RequestProgress(
                sub.request_id,
                sub.tenant,
                self.id,
                event,
                new_tokens=new_tokens,
                prompt_tokens=len(sub.prompt_token_ids),
                completion_tokens=req.generated,
                decode_worker=req.decode_worker,
                message=message,
                suspect=suspect,
            ),
        )

    async def fail(
        self: Worker, req: Active, code: int, message: str, retryable: bool, suspect: str = ""
    ) -> None:
        """Report a request we cannot serve: retryable failures go back to the scheduler only
        (``suspect``: the peer worker to blame, which the scheduler avoids for the retry)."""
        assert self.bus is not None
        if not retryable:
            sub = req.submit
            await self.bus.publish(
                Subjects.stream(sub.gateway_id), RequestError(sub.request_id, code, message)
            )
        event = "failed" if retryable else "error"
        await self.progress(req, event, message=message, suspect=suspect)
