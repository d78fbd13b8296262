"""A chat request's messages (pydantic): role, text content (parts other than text are
refused), and the tool calls and tool results of earlier turns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loraplex.gateway.errors import InvalidParamError


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str  # JSON text, as the API gave it


class MessageToolCall(BaseModel):
    """A call an earlier assistant turn made (sent back in the conversation)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: str = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # a "tool" turn: the call it answers

    def text(self, index: int) -> str:
        """The message's text; content parts other than text are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidParamError(
                    "only text content parts are supported", f"messages.{index}.content"
                )
            parts.append(part["text"])
        return "".join(parts)
