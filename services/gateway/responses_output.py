"""OpenAI's Responses API, the answer side: the ``response`` object and, streamed, its events.

The generated text goes through the chat route's readers (``chat_answer.py``): thinking becomes a
``reasoning`` item, content a ``message`` item with one ``output_text`` part, and each tool call
a ``function_call`` item.  ``ResponseStream`` turns the pieces into the typed events the OpenAI
SDKs read (``response.created``, ``response.output_item.added``,
``response.output_text.delta``, ``response.function_call_arguments.delta``, ...,
``response.completed``), each with its ``sequence_number``; the last one carries the same
``response`` object a non-streamed request gets.  Plain Python.
"""

from __future__ import annotations

import json
from typing import Any

from loraplex.gateway.chat_answer import AnswerStream, Piece
from loraplex.gateway.generation import Usage
from loraplex.gateway.prepare import Prepared
from loraplex.gateway.responses_api import ITEM_PREFIX, ResponsesRequest, new_id


def response_object(
    req: ResponsesRequest,
    p: Prepared,
    response_id: str,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None = None,
    store: bool = False,
) -> dict[str, Any]:
    """The ``response`` object; ``status`` is in_progress, completed or incomplete; ``store``:
    whether it is (to be) kept for ``previous_response_id``."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": p.created,
        "status": status,
        "model": p.model,
        "output": output,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "error": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "temperature": p.sampling.temperature,
        "top_p": p.sampling.top_p,
        "tools": req.tools or [],
        "tool_choice": req.tool_choice or ("auto" if req.tools else "none"),
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "text": req.text or {"format": {"type": "text"}},
        "store": store,
        "previous_response_id": req.previous_response_id,
        "background": bool(req.background),
        "metadata": req.metadata or {},
        "user": req.user,
        "usage": None if usage is None else usage_json(usage),
    }


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def status_of(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


class ResponseStream:
    """One response's events, from the pieces of its text (``AnswerStream``)."""

    def __init__(self, req: ResponsesRequest, p: Prepared, store: bool = False) -> None:
        self.req, self.p, self.store = req, p, store
        self.response_id = new_id("resp")
        self.reader = AnswerStream(p.reasoning_parser, p.tool_use)
        self.output: list[dict[str, Any]] = []  # items done so far, and the open one
        self._open: dict[str, Any] | None = None  # the item text is being added to
        self._seq = 0

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        return {"type": kind, "sequence_number": self._seq - 1, **fields}

    def body(self) -> dict[str, Any]:
        """The ``response`` object as it starts (``in_progress``, no output yet)."""
        return response_object(
            self.req, self.p, self.response_id, "in_progress", [], store=self.store
        )

    def start(self) -> list[dict[str, Any]]:
        body = self.body()
        return [
            self._event("response.created", response=body),
            self._event("response.in_progress", response=body),
        ]

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._piece(self.reader.feed(text))

    def finish(self, finish_reason: str | None, usage: Usage) -> list[dict[str, Any]]:
        events = self._piece(self.reader.finish())
        events += self._close()
        status = status_of(finish_reason)
        body = response_object(
            self.req, self.p, self.response_id, status, self.output, usage, self.store
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*events, self._event(kind, response=body)]

    def error(self, error: dict[str, Any]) -> dict[str, Any]:
        """The event of a failure after the stream started (an OpenAI error body's fields)."""
        return self._event(
            "error", code=error.get("code"), message=error["message"], param=error.get("param")
        )

    # ---- items ------------------------------------------------------------------------------
    # The item text is added to is always the last of ``output``; events name it by id and index.
    def _on(self, kind: str, item: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return self._event(kind, item_id=item["id"], output_index=len(self.output) - 1, **fields)

    def _piece(self, piece: Piece) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if piece.reasoning:
            events += self._text("reasoning", piece.reasoning)
        if piece.content:
            events += self._text("message", piece.content)
        for call in piece.calls:
            events += self._call(call)
        return events

    def _text(self, kind: str, text: str) -> list[dict[str, Any]]:
        events = []
        if self._open is None or self._open["type"] != kind:
            events += self._close() + self._add(kind)
        item = self._open
        assert item is not None
        item["content"][0]["text"] += text
        delta = "output_text" if kind == "message" else "reasoning_text"
        events.append(self._on(f"response.{delta}.delta", item, content_index=0, delta=text))
        return events

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        function = call.get("function", {})
        if "id" in call:  # a new call; a named function's later pieces are its arguments only
            events += self._close()
            events += self._add("function_call", call_id=call["id"], name=function.get("name", ""))
        item = self._open
        assert item is not None and item["type"] == "function_call"
        piece = function.get("arguments", "")
        item["arguments"] += piece
        if piece:
            events.append(self._on("response.function_call_arguments.delta", item, delta=piece))
        return events

    def _add(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        item: dict[str, Any] = {
            "id": new_id(ITEM_PREFIX[kind]),
            "type": kind,
            "status": "in_progress",
        }
        if kind == "message":
            item["role"] = "assistant"
            item["content"] = [
                {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            ]
        elif kind == "reasoning":
            item["summary"] = []
            item["content"] = [{"type": "reasoning_text", "text": ""}]
        else:
            item.update(arguments="", **fields)
        self.output.append(item)
        self._open = item
        added = self._event(
            "response.output_item.added", output_index=len(self.output) - 1, item=_copy(item)
        )
        if kind != "message":
            return [added]
        part = _copy(item["content"][0])
        return [added, self._on("response.content_part.added", item, content_index=0, part=part)]

    def _close(self) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        item["status"] = "completed"
        events = []
        if item["type"] == "function_call":
            args = item["arguments"]
            events.append(self._on("response.function_call_arguments.done", item, arguments=args))
        else:
            part = item["content"][0]
            text = "output_text" if item["type"] == "message" else "reasoning_text"
            events.append(
                self._on(f"response.{text}.done", item, content_index=0, text=part["text"])
            )
            if item["type"] == "message":
                done = self._on(
                    "response.content_part.done", item, content_index=0, part=_copy(part)
                )
                events.append(done)
        done_item = self._event(
            "response.output_item.done", output_index=len(self.output) - 1, item=_copy(item)
        )
        return [*events, done_item]


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of an item that later text must not change (events are sent as they are)."""
    return json.loads(json.dumps(value))


def whole_response(
    stream: ResponseStream, text: str, finish_reason: str | None, usage: Usage
) -> dict[str, Any]:
    """A non-streamed answer: the same items the stream would have built, fed at once."""
    stream.feed(text)
    events = stream.finish(finish_reason, usage)
    return events[-1]["response"]
