"""``POST /v1/completions`` and ``POST /v1/chat/completions`` (JSON or SSE)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from loraplex.gateway.deps import ServiceDep, TenantDep
from loraplex.gateway.openai_format import ChatFormat, CompletionFormat
from loraplex.gateway.peer import still_connected
from loraplex.gateway.responder import respond
from loraplex.gateway.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1", tags=["generation"])


@router.post("/completions", summary="Create a completion (OpenAI)")
async def create_completion(
    body: CompletionRequest, tenant: TenantDep, service: ServiceDep, request: Request
) -> Response:
    prompts = await service.prepare_completion(body, tenant.name)  # one per prompt of a batch
    gens = await service.start_choices(prompts, body.n, still_connected(request.scope))
    fmt = CompletionFormat(prompts[0])
    return await respond(request, gens, fmt, body.stream, body.include_usage, body.n)


@router.post("/chat/completions", summary="Create a chat completion (OpenAI)")
async def create_chat_completion(
    body: ChatCompletionRequest, tenant: TenantDep, service: ServiceDep, request: Request
) -> Response:
    prepared = await service.prepare_chat(body, tenant.name)
    gens = await service.start_choices([prepared], body.n, still_connected(request.scope))
    fmt = ChatFormat(prepared)
    return await respond(request, gens, fmt, body.stream, body.include_usage, body.n)
