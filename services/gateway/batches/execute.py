"""One batch line run as its HTTP route would run it: the same validation, preparation, fair
queueing (the scheduler charges the batch's tenant) and JSON answer, or the same error body.

A refusal that says "later" (429: the tenant's queue is full; 503: no scheduler or no worker
right now) is no answer: ``RetryLater`` makes the runner send the line again after a while, so a
batch larger than its tenant's queue drains at the pace the tenant's fair share allows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from loraplex.errors import LoraplexError
from loraplex.gateway.errors import InvalidParamError, classify
from loraplex.gateway.generation import Usage
from loraplex.gateway.openai_format import ChatFormat, CompletionFormat
from loraplex.gateway.responder import whole_answer
from loraplex.gateway.responses_api import ResponsesRequest
from loraplex.gateway.responses_history import ResponseHistory
from loraplex.gateway.responses_output import whole_response
from loraplex.gateway.responses_prepare import prepare_response
from loraplex.gateway.schemas import ChatCompletionRequest, CompletionRequest
from loraplex.gateway.service import GatewayService
from loraplex.http_errors import error_body, validation_message

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 503})


class RetryLater(Exception):
    """The line was refused for now (queue full, no capacity): send it again later."""


class LineExecutor:
    def __init__(self, service: GatewayService, history: ResponseHistory) -> None:
        self.service, self.history = service, history

    async def __call__(
        self, tenant: str, endpoint: str, body: dict[str, Any], wanted: Callable[[], bool]
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of the request; ``RetryLater`` for a refusal that may pass later.
        ``wanted()`` False (the batch was cancelled) stops it before it is queued."""
        try:
            return 200, await self._run(tenant, endpoint, body, wanted)
        except ValidationError as e:
            located = [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
            message, param = validation_message(RequestValidationError(located))
            return 400, error_body(400, message, param, "invalid_value")
        except LoraplexError as e:
            status, err = classify(e)
            if status in RETRY_STATUSES:
                raise RetryLater(str(e)) from e
            return status, err
        except Exception as e:  # a bug: that line's answer, as the route's would be; never a loop
            log.exception("batch line failed", exc_info=e)
            return 500, error_body(500, "internal server error", None, "internal_error")

    async def _run(
        self, tenant: str, endpoint: str, body: dict[str, Any], wanted: Callable[[], bool]
    ) -> dict[str, Any]:
        service = self.service
        if endpoint == "/v1/responses":
            return await self._response(tenant, body, wanted)
        if endpoint == "/v1/chat/completions":
            chat = ChatCompletionRequest.model_validate(body)
            prompt = await service.prepare_chat(chat, tenant)
            prompts, fmt, n = [prompt], ChatFormat(prompt), chat.n
        else:
            req = CompletionRequest.model_validate(body)
            prompts = await service.prepare_completion(req, tenant)
            fmt, n = CompletionFormat(prompts[0]), req.n
        gens = await service.start_choices(prompts, n, wanted)
        try:
            return await whole_answer(gens, fmt, n)
        finally:
            for g in gens:
                await g.aclose()

    async def _response(
        self, tenant: str, body: dict[str, Any], wanted: Callable[[], bool]
    ) -> dict[str, Any]:
        """A Responses API line: as the route answers it, kept when it asks to be (so a later
        request may continue it with ``previous_response_id``); never in the background."""
        req = ResponsesRequest.model_validate(body)
        if req.background:
            raise InvalidParamError("background is not supported in a batch", "background")
        ready = await prepare_response(req, tenant, self.service, self.history)
        (gen,) = await self.service.start_choices([ready.prompt], 1, wanted)
        try:
            text = await gen.collect()
        finally:
            await gen.aclose()
        usage = Usage.total([gen], [gen])
        return await ready.keep(whole_response(ready.stream, text, gen.finish_reason, usage))
