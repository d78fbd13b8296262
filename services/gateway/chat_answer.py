"""A chat answer's text as the client sees it: reasoning (``reasoning.py``), then content and
tool calls (``tool_calls.py``), streamed or whole.

The reasoning parser reads the raw text first; only what it gives as content is read for tool
calls, so a model that thinks before it calls (Qwen3) answers with both.  ``AnswerStream`` is one
choice's stream; ``read_answer`` feeds a whole answer through the same code, so streamed and
non-streamed answers always agree.  Plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraplex.gateway.reasoning import ReasoningStream
from loraplex.gateway.tool_calls import ToolCallStream
from loraplex.gateway.tools import ToolUse


@dataclass
class Piece:
    """What one feed gives the client."""

    reasoning: str = ""
    content: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: Piece) -> Piece:
        self.reasoning += other.reasoning
        self.content += other.content
        self.calls += other.calls
        return self

    def delta(self) -> dict[str, Any]:
        """The chunk's ``delta`` (reasoning under vLLM's new and old names)."""
        out: dict[str, Any] = {}
        if self.reasoning:
            out["reasoning"] = out["reasoning_content"] = self.reasoning
        if self.content:
            out["content"] = self.content
        if self.calls:
            out["tool_calls"] = self.calls
        return out


class AnswerStream:
    def __init__(self, reasoning_parser: str | None, tool_use: ToolUse | None) -> None:
        self.reasoning = ReasoningStream(reasoning_parser) if reasoning_parser else None
        self.tools = ToolCallStream(tool_use) if tool_use is not None else None

    @property
    def calls_made(self) -> int:
        return self.tools.calls_made if self.tools is not None else 0

    @property
    def thought(self) -> bool:
        return self.reasoning is not None and self.reasoning.thought

    def feed(self, text: str) -> Piece:
        piece = Piece()
        if self.reasoning is not None:
            split = self.reasoning.feed(text)
            piece.reasoning, text = split.reasoning, split.content
        return piece.add(self._content(text))

    def finish(self) -> Piece:
        piece = Piece()
        if self.reasoning is not None:
            split = self.reasoning.finish()
            piece.reasoning = split.reasoning
            piece.add(self._content(split.content))
        if self.tools is not None:
            out = self.tools.finish()
            piece.add(Piece(content=out.content, calls=out.calls))
        return piece

    def _content(self, text: str) -> Piece:
        if self.tools is None:
            return Piece(content=text)
        out = self.tools.feed(text)
        return Piece(content=out.content, calls=out.calls)


@dataclass(frozen=True)
class ReadAnswer:
    reasoning: str | None  # None: the answer did not think (or no parser)
    content: str | None
    tool_calls: list[dict[str, Any]]


def read_answer(text: str, reasoning_parser: str | None, tool_use: ToolUse | None) -> ReadAnswer:
    """A whole answer; tool calls as a message holds them (no ``index``)."""
    stream = AnswerStream(reasoning_parser, tool_use)
    piece = stream.feed(text).add(stream.finish())
    calls = [{k: v for k, v in c.items() if k != "index"} for c in piece.calls]
    content: str | None = piece.content
    if (calls and not piece.content.strip()) or (stream.thought and not piece.content):
        content = None
    return ReadAnswer(piece.reasoning if stream.thought else None, content, calls)
