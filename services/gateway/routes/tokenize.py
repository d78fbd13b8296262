"""``POST /tokenize`` and ``POST /detokenize`` (vLLM's bodies and answers).

``model`` is resolved as in the completion routes (base model or an adapter the tenant may use,
else 404); when it is left out, the base model is meant, as in vLLM.  Adapters share the base
model's tokenizer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from loraplex.gateway.chat_messages import ChatMessage
from loraplex.gateway.deps import ServiceDep, TenantDep
from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.schemas import (
    ChatCompletionRequest,
    check_continuation,
    checked_template_kwargs,
)
from loraplex.gateway.service import GatewayService
from loraplex.gateway.tokenization import detokenize, token_strings, tokenize_chat, tokenize_text
from loraplex.gateway.tools import tool_use

router = APIRouter(tags=["tokenization"])


class TokenizeRequest(BaseModel):
    """A text ``prompt`` or chat ``messages`` (exactly one of them)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None  # None: True for a prompt, False for messages (vLLM)
    return_token_strs: bool = False
    continue_final_message: bool = False
    chat_template: str | None = None
    tools: list[Any] | None = None  # rendered with the messages, as the chat route does
    chat_template_kwargs: dict[str, Any] | None = None

    def check_supported(self) -> None:
        """Refuse (400) what cannot be honoured instead of ignoring it."""
        if (self.prompt is None) == (self.messages is None):
            raise InvalidParamError(
                "send either a text 'prompt' or chat 'messages'",
                "messages" if self.messages is not None else "prompt",
            )
        check_continuation(self.continue_final_message, self.add_generation_prompt)
        if self.chat_template is not None:
            raise InvalidParamError(
                "chat_template is not supported: the model's own template is used", "chat_template"
            )


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[StrictInt]  # true is not token 1


async def _check_model(service: GatewayService, tenant: str, model: str | None) -> None:
    """ModelNotFoundError (404) unless ``model`` is the base model or an adapter ``tenant`` may use."""
    await service.resolve_adapter(tenant, service.settings.model_id if model is None else model)


@router.post("/tokenize", summary="Tokenize a prompt or chat messages (vLLM)")
async def tokenize(body: TokenizeRequest, tenant: TenantDep, service: ServiceDep) -> dict[str, Any]:
    body.check_supported()
    await _check_model(service, tenant.name, body.model)
    tok = service.tokenizer
    if body.messages is not None:
        # the chat route's own rendering of the messages (content parts joined, names kept)
        messages = ChatCompletionRequest.model_construct(messages=body.messages).template_messages()
        special = bool(body.add_special_tokens)
        use = tool_use(body.tools, None, None, "hermes")  # checks them as the chat route does
        tools = use.template_tools() if use is not None else None
        kwargs = checked_template_kwargs(body.chat_template_kwargs)
        ids = await tokenize_chat(
            tok,
            messages,
            body.add_generation_prompt,
            special,
            tools,
            kwargs,
            body.continue_final_message,
        )
    else:
        assert body.prompt is not None
        special = body.add_special_tokens is not False
        ids = await tokenize_text(tok, body.prompt, special)
    strs = await token_strings(tok, ids) if body.return_token_strs else None
    return {
        "count": len(ids),
        "max_model_len": service.settings.max_model_len,
        "tokens": ids,
        "token_strs": strs,
    }


@router.post("/detokenize", summary="Token ids back to text (vLLM)")
async def detokenize_tokens(
    body: DetokenizeRequest, tenant: TenantDep, service: ServiceDep
) -> dict[str, str]:
    await _check_model(service, tenant.name, body.model)
    return {"prompt": await detokenize(service.tokenizer, body.tokens)}
