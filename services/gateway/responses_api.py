"""OpenAI's Responses API (``POST /v1/responses``), the request side: a body becomes a chat
completion request, so it gets everything a chat request gets (tenants, fairness, tools,
reasoning, structured outputs, every check).

Served as vLLM serves it: ``input`` (a string, or message, function call and function call
output items), ``instructions``, ``max_output_tokens``, ``temperature``, ``top_p``, function
``tools``, ``tool_choice``, ``parallel_tool_calls``, ``text.format`` (``text``, ``json_object``,
``json_schema``), ``stream``, ``metadata``, ``store`` with ``previous_response_id`` (the
conversation so far comes from the response store, ``responses_history.py``) and ``background``
(``responses_background.py``).  Tool types other
than ``function`` and input parts other than text are a 400.  ``responses_output.py`` builds the
answer.  Plain Python over pydantic bodies.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.schemas import ChatCompletionRequest, Float, validated

TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
ITEM_PREFIX = {"message": "msg", "reasoning": "rs", "function_call": "fc"}
# OpenAI's bounds on metadata: it is stored with the response, so it is bounded here too
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=2**31)] | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (
            len(value) > METADATA_PAIRS
            or any(len(k) > METADATA_KEY_CHARS for k in value)
            or any(len(v) > METADATA_VALUE_CHARS for v in value.values())
        ):
            raise ValueError(
                f"metadata holds at most {METADATA_PAIRS} pairs, keys of at most "
                f"{METADATA_KEY_CHARS} characters and values of at most {METADATA_VALUE_CHARS}"
            )
        return value


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """``input`` as a list of items, each with an ``id`` (what ``input_items`` lists later):
    a string is one user message."""
    if isinstance(req.input, str):
        part = {"type": "input_text", "text": req.input}
        return [{"id": new_id("msg"), "type": "message", "role": "user", "content": [part]}]
    items = []
    for item in req.input:
        if isinstance(item, dict) and not isinstance(item.get("id"), str):
            prefix = ITEM_PREFIX.get(item.get("type", "message"), "item")
            item = {**item, "id": new_id(prefix)}
        items.append(item)
    return items


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParamError(f"{where}.content must be a string or a list of parts", where)
    parts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
            raise InvalidParamError(
                f"{where}.content.{i}: only text parts are supported", f"{where}.content.{i}"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidParamError(f"{where}.content.{i}.text must be a string", where)
        parts.append(text)
    return "".join(parts)


def _messages(instructions: str | None, items: list[Any], first: int) -> list[dict[str, Any]]:
    """``instructions`` and the conversation's items as chat messages: function calls become an
    assistant turn's ``tool_calls``, their outputs ``tool`` turns, reasoning items are left out.
    Item ``first`` is ``input.0`` (those before it come from the previous response)."""
    out: list[dict[str, Any]] = []
    if instructions:
        out.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        where = f"input.{i - first}" if i >= first else "previous_response_id"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidParamError(f"{where}.role {role!r} is not supported", where)
            text = _text_of(item.get("content"), where)
            out.append({"role": "system" if role == "developer" else role, "content": text})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _text_of(output, where)
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
        elif kind != "reasoning":
            raise InvalidParamError(
                f"{where}: input items of type {kind!r} are not supported", where
            )
    return out


def _tools(req: ResponsesRequest) -> list[dict[str, Any]] | None:
    if req.tools is None:
        return None
    out = []
    for i, tool in enumerate(req.tools):
        if tool.get("type") != "function":
            raise InvalidParamError(
                f"tools.{i}: only function tools are supported, not {tool.get('type')!r}",
                f"tools.{i}",
            )
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(raw: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(raw, dict) and raw.get("type") == "function" and "name" in raw:
        return {"type": "function", "function": {"name": raw["name"]}}
    return raw


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is None or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        schema = {"name": fmt.get("name", "output"), "schema": fmt.get("schema")}
        return {"type": "json_schema", "json_schema": schema}
    return fmt


def to_chat(
    req: ResponsesRequest, items: list[dict[str, Any]], history: Sequence[dict[str, Any]] = ()
) -> ChatCompletionRequest:
    """The chat completion request a Responses body means: ``history`` (the items of the
    previous response's conversation and its output) then ``items`` (``input_items(req)``).
    ``instructions`` are this request's only, as in OpenAI's API."""
    if req.conversation is not None:
        raise InvalidParamError(
            "conversation objects are not supported: continue with previous_response_id",
            "conversation",
        )
    fields: dict[str, Any] = {
        "model": req.model,
        "messages": _messages(req.instructions, [*history, *items], len(history)),
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tools": _tools(req),
        "tool_choice": _tool_choice(req.tool_choice),
        "parallel_tool_calls": req.parallel_tool_calls,
        "response_format": _response_format(req.text),
        "user": req.user,
    }
    if not fields["messages"]:
        raise InvalidParamError("input must hold at least one message", "input")
    try:
        return validated(ChatCompletionRequest, {k: v for k, v in fields.items() if v is not None})
    except InvalidParamError as e:
        if e.param and e.param.startswith("messages"):  # the items of input, as chat turns
            raise InvalidParamError(f"input: {e}", "input") from e
        raise
