"""A ``POST /v1/responses`` body made ready to run: the conversation it continues (from the
response store), its chat prompt, the stream that shapes its answer, and the keeping of the
finished answer.  Shared by the HTTP route and the Batch API's lines, so both answer alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loraplex.gateway.prepare import Prepared
from loraplex.gateway.responses_api import ResponsesRequest, input_items, to_chat
from loraplex.gateway.responses_history import ResponseHistory
from loraplex.gateway.responses_output import ResponseStream
from loraplex.gateway.service import GatewayService


@dataclass(frozen=True)
class PreparedResponse:
    tenant: str
    prompt: Prepared
    stream: ResponseStream
    items: list[dict[str, Any]]  # the conversation kept with the answer: before, then input
    history: ResponseHistory

    async def keep(self, response: dict[str, Any]) -> dict[str, Any]:
        """The finished ``response``, kept in the store when the request asked for it (its
        ``store`` field says whether it was)."""
        if response["store"]:
            response["store"] = await self.history.keep(self.tenant, response, self.items)
        return response


async def prepare_response(
    body: ResponsesRequest, tenant: str, service: GatewayService, history: ResponseHistory
) -> PreparedResponse:
    before = await history.previous(tenant, body)
    items = input_items(body)
    prompt = await service.prepare_chat(to_chat(body, items, before), tenant)
    stream = ResponseStream(body, prompt, store=history.keeps(body))
    return PreparedResponse(tenant, prompt, stream, [*before, *items], history)
