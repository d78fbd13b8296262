"""OpenAI response objects and SSE framing for completions and chat completions."""

from __future__ import annotations

import json
from typing import Any

from loraplex.gateway.chat_answer import AnswerStream, read_answer
from loraplex.gateway.generation import TokenInfo, Usage
from loraplex.gateway.prepare import Prepared

DONE = "data: [DONE]\n\n"

Answer = tuple[str, str | None, list[TokenInfo] | None]  # one choice: text, finish, logprobs


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
        self._offsets: dict[int, int] = {}  # per choice: text_offset of its next token

    def logprobs(self, infos: list[TokenInfo] | None, index: int = 0) -> dict[str, Any] | None:
        """The legacy completions shape: parallel lists, alternatives as token -> logprob."""
        if infos is None:
            return None
        offsets = []
        for info in infos:
            offsets.append(self._offsets.get(index, 0))
            self._offsets[index] = offsets[-1] + len(info.token)
        return {
            "tokens": [i.token for i in infos],
            "token_logprobs": [i.logprob for i in infos],
            "top_logprobs": [None if i.top is None else dict(i.top) for i in infos],
            "text_offset": offsets,
        }

    def choice(self, index: int, answer: Answer) -> dict[str, Any]:
        text, finish_reason, logprobs = answer
        return {
            "index": index,
            "text": text,
            "logprobs": self.logprobs(logprobs, index),
            "finish_reason": finish_reason,
        }

    def response(self, answers: list[Answer], usage: Usage) -> dict[str, Any]:
        choices = [self.choice(i, a) for i, a in enumerate(answers)]
        return {**self.head, "choices": choices, "usage": usage.to_json()}

    def first_chunks(self, n: int = 1) -> list[dict[str, Any]]:
        return []

    def chunk(
        self,
        text: str,
        finish_reason: str | None,
        logprobs: list[TokenInfo] | None = None,
        index: int = 0,
    ) -> dict[str, Any] | None:
        """One SSE chunk; None when there is nothing to send yet (text held back)."""
        return {**self.head, "choices": [self.choice(index, (text, finish_reason, logprobs))]}

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
        self.tool_use, self.reasoning_parser = p.tool_use, p.reasoning_parser
        self.reads = p.tool_use is not None or p.reasoning_parser is not None
        self._streams: dict[int, AnswerStream] = {}  # per choice, while streaming

    def logprobs(self, infos: list[TokenInfo] | None, index: int = 0) -> dict[str, Any] | None:
        if infos is None:
            return None
        content = [
            {**_chat_token(i.token, i.logprob), "top_logprobs": [_chat_token(*t) for t in i.top]}
            for i in infos
        ]
        return {"content": content}

    def choice(self, index: int, answer: Answer) -> dict[str, Any]:
        text, finish_reason, logprobs = answer
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.reads:
            read = read_answer(text, self.reasoning_parser, self.tool_use)
            message["content"] = read.content
            if read.reasoning is not None:
                message["reasoning"] = message["reasoning_content"] = read.reasoning
            if read.tool_calls:
                message["tool_calls"] = read.tool_calls
                finish_reason = self._called(finish_reason)
        return {
            "index": index,
            "message": message,
            "logprobs": self.logprobs(logprobs, index),
            "finish_reason": finish_reason,
        }

    def _called(self, finish_reason: str | None) -> str | None:
        """The finish reason of an answer that called tools: ``tool_calls`` where the model
        chose to (OpenAI answers a named function's call with ``stop``)."""
        named = self.tool_use is not None and self.tool_use.choice == "named"
        return "tool_calls" if finish_reason == "stop" and not named else finish_reason

    def first_chunks(self, n: int = 1) -> list[dict[str, Any]]:
        roles = [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
            for i in range(n)
        ]
        return [{**self.chunk_head, "choices": [{**r, "finish_reason": None}]} for r in roles]

    def chunk(
        self,
        text: str,
        finish_reason: str | None,
        logprobs: list[TokenInfo] | None = None,
        index: int = 0,
    ) -> dict[str, Any] | None:
        delta: dict[str, Any] = {"content": text} if text else {}
        if self.reads:
            delta, finish_reason = self._read_delta(text, finish_reason, index)
            if not delta and logprobs is None and finish_reason is None:
                return None
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": self.logprobs(logprobs, index),
            "finish_reason": finish_reason,
        }
        return {**self.chunk_head, "choices": [choice]}

    def _read_delta(
        self, text: str, finish_reason: str | None, index: int
    ) -> tuple[dict[str, Any], str | None]:
        """Choice ``index``'s text through its reasoning and tool call reader."""
        stream = self._streams.get(index)
        if stream is None:
            stream = self._streams[index] = AnswerStream(self.reasoning_parser, self.tool_use)
        piece = stream.feed(text)
        if finish_reason is not None:
            piece.add(stream.finish())
            if stream.calls_made:
                finish_reason = self._called(finish_reason)
        return piece.delta(), finish_reason

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {**self.chunk_head, "choices": [], "usage": usage.to_json()}
