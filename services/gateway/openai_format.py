"""OpenAI response objects and SSE framing for completions and chat completions."""

from __future__ import annotations

import json
from typing import Any

from loraplex.gateway.generation import TokenInfo, Usage
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
        self._offset = 0  # text_offset of the next token (legacy completions logprobs)

    def logprobs(self, infos: list[TokenInfo] | None) -> dict[str, Any] | None:
        """The legacy completions shape: parallel lists, alternatives as token -> logprob."""
        if infos is None:
            return None
        offsets = []
        for info in infos:
            offsets.append(self._offset)
            self._offset += len(info.token)
        return {
            "tokens": [i.token for i in infos],
            "token_logprobs": [i.logprob for i in infos],
            "top_logprobs": [dict(i.top) for i in infos],
            "text_offset": offsets,
        }

    def response(
        self,
        text: str,
        finish_reason: str | None,
        usage: Usage,
        logprobs: list[TokenInfo] | None = None,
    ) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": self.logprobs(logprobs),
            "finish_reason": finish_reason,
        }
        return {**self.head, "choices": [choice], "usage": usage.to_json()}

    def first_chunks(self) -> list[dict[str, Any]]:
        return []

    def chunk(
        self, text: str, finish_reason: str | None, logprobs: list[TokenInfo] | None = None
    ) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": self.logprobs(logprobs),
            "finish_reason": finish_reason,
        }
        return {**self.head, "choices": [choice]}

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {**self.head, "choices": [], "usage": usage.to_json()}


def _chat_token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


class ChatFormat(CompletionFormat):
    """``chat.completion`` / ``chat.completion.chunk`` objects (``POST /v1/chat/completions``)."""

    object_name = "chat.completion"

    def __init__(self, p: Prepared) -> None:
        super().__init__(p)
        self.chunk_head = {**self.head, "object": "chat.completion.chunk"}

    def logprobs(self, infos: list[TokenInfo] | None) -> dict[str, Any] | None:
        if infos is None:
            return None
        content = [
            {**_chat_token(i.token, i.logprob), "top_logprobs": [_chat_token(*t) for t in i.top]}
            for i in infos
        ]
        return {"content": content}

    def response(
        self,
        text: str,
        finish_reason: str | None,
        usage: Usage,
        logprobs: list[TokenInfo] | None = None,
    ) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": self.logprobs(logprobs),
            "finish_reason": finish_reason,
        }
        return {**self.head, "choices": [choice], "usage": usage.to_json()}

    def first_chunks(self) -> list[dict[str, Any]]:
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        return [{**self.chunk_head, "choices": [{**role, "finish_reason": None}]}]

    def chunk(
        self, text: str, finish_reason: str | None, logprobs: list[TokenInfo] | None = None
    ) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": self.logprobs(logprobs),
            "finish_reason": finish_reason,
        }
        return {**self.chunk_head, "choices": [choice]}

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {**self.chunk_head, "choices": [], "usage": usage.to_json()}
