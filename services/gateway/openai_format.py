"""OpenAI response objects and SSE framing for completions and chat completions."""

from __future__ import annotations

import json
from typing import Any

from loraplex.gateway.generation import Usage
from loraplex.gateway.prepare import Prepared

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


class CompletionFormat:
    """``text_completion`` objects (``POST /v1/completions``)."""

    object_name = "text_completion"

    def __init__(self, p: Prepared) -> None:
        self.head = {
            "id": p.request_id,
            "object": self.object_name,
            "created": p.created,
            "model": p.model,
        }

    def response(self, text: str, finish_reason: str | None, usage: Usage) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "choices": [choice], "usage": usage.to_json()}

    def first_chunks(self) -> list[dict[str, Any]]:
        return []

    def chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "choices": [choice]}

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {**self.head, "choices": [], "usage": usage.to_json()}


class ChatFormat(CompletionFormat):
    """``chat.completion`` / ``chat.completion.chunk`` objects (``POST /v1/chat/completions``)."""

    object_name = "chat.completion"

    def __init__(self, p: Prepared) -> None:
        super().__init__(p)
        self.chunk_head = {**self.head, "object": "chat.completion.chunk"}

    def response(self, text: str, finish_reason: str | None, usage: Usage) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "choices": [choice], "usage": usage.to_json()}

    def first_chunks(self) -> list[dict[str, Any]]:
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        return [{**self.chunk_head, "choices": [{**role, "finish_reason": None}]}]

    def chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.chunk_head, "choices": [choice]}

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {**self.chunk_head, "choices": [], "usage": usage.to_json()}
