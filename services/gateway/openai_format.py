"""OpenAI response objects and SSE framing for completions and chat completions."""

from __future__ import annotations

import json
from typing import Any

from loraplex.gateway.chat_answer import AnswerStream, read_answer
from loraplex.gateway.generation import TokenInfo, Usage
from loraplex.gateway.prepare import Prepared
from loraplex.gateway.token_info import as_token_ids

DONE = "data: [DONE]\n\n"

Answer = tuple[str, str | None, list[TokenInfo] | None]  # one choice: text, finish, logprobs
PromptInfos = list[list[TokenInfo] | None]  # per choice: its prompt's tokens, scored


def vllm_prompt_logprobs(infos: list[TokenInfo] | None, k: int) -> list[Any] | None:
    """vLLM's ``prompt_logprobs``: per prompt token, null for the first (nothing scores it),
    else ``{token id: {"logprob", "rank", "decoded_token"}}`` for the token itself, then its
    ``k`` most likely alternatives (ranks 1..k), as vLLM builds the map.  None when the
    workers' prompt logprobs never came (lost with the delta that carried them)."""
    if infos is None:
        return None
    out: list[Any] = [None]
    for info in infos[1:]:
        entry = {str(info.token_id): _vllm_logprob(info.logprob, info.rank, info.token)}
        pairs = zip(info.top or [], info.top_ids, strict=False)
        for rank, ((text, logprob), token_id) in enumerate(list(pairs)[:k], start=1):
            entry.setdefault(str(token_id), _vllm_logprob(logprob, rank, text))
        out.append(entry)
    return out


def _vllm_logprob(logprob: float | None, rank: int | None, text: str) -> dict[str, Any]:
    return {"logprob": logprob, "rank": rank, "decoded_token": text}


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
        self.prompt_logprobs = p.prompt_logprobs  # vLLM's: alternatives per prompt token
        self.tokens_as_ids = p.tokens_as_ids
        self.return_token_ids = p.return_token_ids

    def logprobs(self, infos: list[TokenInfo] | None, index: int = 0) -> dict[str, Any] | None:
        """The legacy completions shape: parallel lists, alternatives as token -> logprob."""
        if infos is None:
            return None
        if self.tokens_as_ids:
            infos = [as_token_ids(i) for i in infos]
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

    def response(
        self, answers: list[Answer], usage: Usage, prompts: PromptInfos | None = None
    ) -> dict[str, Any]:
        """``prompts``: each choice's prompt tokens with their logprobs, for
        ``prompt_logprobs`` (the Generation's ``prompt_logprobs()``)."""
        choices = [self.choice(i, a) for i, a in enumerate(answers)]
        out = {**self.head, "choices": choices, "usage": usage.to_json()}
        if self.prompt_logprobs is not None:
            self.add_prompt_logprobs(out, prompts or [None] * len(choices), self.prompt_logprobs)
        return out

    def add_prompt_logprobs(self, out: dict[str, Any], prompts: PromptInfos, k: int) -> None:
        """vLLM puts a completion's on each choice (a batch's choices have different prompts)."""
        for choice, infos in zip(out["choices"], prompts, strict=True):
            choice["prompt_logprobs"] = vllm_prompt_logprobs(infos, k)

    def add_token_ids(
        self, out: dict[str, Any], ids: list[tuple[list[int], list[int] | None]]
    ) -> None:
        """vLLM's ``return_token_ids``: each choice's prompt and answer ids (``None`` for an
        answer whose ids were not all received)."""
        for choice, (prompt, answer) in zip(out["choices"], ids, strict=True):
            choice["prompt_token_ids"], choice["token_ids"] = prompt, answer

    def with_token_ids(
        self, chunk: dict[str, Any], ids: list[int], prompt: list[int] | None
    ) -> dict[str, Any]:
        """A stream chunk with the ids of its text (and, first, its prompt's)."""
        chunk["choices"][0]["token_ids"] = ids
        if prompt is not None:
            chunk["choices"][0]["prompt_token_ids"] = prompt
        return chunk

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
        if self.tokens_as_ids:
            infos = [as_token_ids(i) for i in infos]
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

    def add_prompt_logprobs(self, out: dict[str, Any], prompts: PromptInfos, k: int) -> None:
        """vLLM puts a chat answer's beside its choices: they all have the one prompt."""
        out["prompt_logprobs"] = vllm_prompt_logprobs(prompts[0] if prompts else None, k)

    def add_token_ids(
        self, out: dict[str, Any], ids: list[tuple[list[int], list[int] | None]]
    ) -> None:
        """vLLM puts a chat answer's prompt ids beside its choices, each choice's own on it."""
        out["prompt_token_ids"] = ids[0][0] if ids else None
        for choice, (_, answer) in zip(out["choices"], ids, strict=True):
            choice["token_ids"] = answer

    def with_token_ids(
        self, chunk: dict[str, Any], ids: list[int], prompt: list[int] | None
    ) -> dict[str, Any]:
        chunk["choices"][0]["token_ids"] = ids
        if prompt is not None:
            chunk["prompt_token_ids"] = prompt
        return chunk

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
