"""Tool calls out of a chat answer's text, streamed or whole (``tools.py`` has the request side).

One ``ToolCallStream`` per choice is fed the generated text as it arrives (after any reasoning:
``chat_answer.py``) and gives back what the client may see now: content, and OpenAI
``tool_calls`` deltas.  A whole answer is the same stream fed at once (``read_answer``), so
streamed and non-streamed answers always agree.

- ``named``: the text *is* the arguments (generation was constrained to the function's schema);
  its deltas stream as the arguments' pieces.
- ``required``: the text is a JSON array of ``{"name", "parameters"}`` (constrained too); it is
  parsed once whole, at the end.
- ``auto``, Hermes format (Qwen 2.5/3, Hermes, and the gateway's default template):
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number, between content.
  Text that may be the start of a tag is held back until it is known not to be.  A block that is
  not JSON, or names a function that is not in ``tools``, is given back as content, verbatim.
  With ``parallel_tool_calls`` false only the first call is kept.
Content is the text outside the calls, verbatim.  While it is only whitespace it is held back,
and dropped when the answer made calls (the content is then null, as OpenAI answers).
Plain Python.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from loraplex.gateway.tools import ToolUse
from loraplex.text.detokenizer import tail_overlap

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def call_json(index: int, name: str, arguments: str) -> dict[str, Any]:
    """A complete call as a streamed delta (``index``) or, without it, in a message."""
    return {
        "index": index,
        "id": new_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


@dataclass
class Out:
    """What one feed gives the client: content text and tool call deltas."""

    content: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.calls)


class ToolCallStream:
    def __init__(self, use: ToolUse) -> None:
        self.use = use
        self.calls_made = 0
        self._text = ""  # required: everything; auto: not yet given out
        self._inside = False  # auto: within <tool_call>
        self._searched = 0  # auto, within a call: where the search for </tool_call> goes on
        self._held_space = ""  # whitespace-only content not given out yet
        self._spoke = False  # content other than whitespace was given out

    def feed(self, text: str) -> Out:
        if not text:
            return Out()
        if self.use.choice == "named":
            return self._named(text)
        self._text += text
        return Out() if self.use.choice == "required" else self._auto(final=False)

    def finish(self) -> Out:
        """The rest, once generation ended."""
        if self.use.choice == "named":
            return self._named("") if not self.calls_made else Out()
        if self.use.choice == "required":
            return self._required()
        out = self._auto(final=True)
        if self._held_space and not self.calls_made:
            out.content += self._held_space
        self._held_space = ""
        return out

    # ---- named: the text is the arguments -------------------------------------------------
    def _named(self, text: str) -> Out:
        if self.calls_made:
            return Out(calls=[{"index": 0, "function": {"arguments": text}}])
        self.calls_made = 1
        return Out(calls=[call_json(0, self.use.named or "", text)])

    # ---- required: a JSON array of calls --------------------------------------------------
    def _required(self) -> Out:
        text, self._text = self._text, ""
        try:
            items = json.loads(text)
        except (ValueError, RecursionError):  # the model's text: any nesting
            items = None
        if not isinstance(items, list) or not items:
            return Out(content=text)  # cut short (max_tokens): what there is, as content
        calls: list[dict[str, Any]] = []
        for item in items if self.use.parallel else items[:1]:
            if not isinstance(item, dict) or item.get("name") not in self.use.names:
                return Out(content=text)
            arguments = json.dumps(item.get("parameters", {}), ensure_ascii=False)
            calls.append(call_json(len(calls), item["name"], arguments))
        self.calls_made = len(calls)
        return Out(calls=calls)

    # ---- auto: Hermes <tool_call> blocks --------------------------------------------------
    def _auto(self, final: bool) -> Out:
        out = Out()
        while True:
            if not self._inside:
                at = self._text.find(OPEN)
                if at < 0:
                    keep = 0 if final else tail_overlap(self._text, OPEN)
                    self._content(out, self._text[: len(self._text) - keep])
                    self._text = self._text[len(self._text) - keep :]
                    return out
                self._content(out, self._text[:at])
                self._text, self._inside = self._text[at + len(OPEN) :], True
            at = self._text.find(CLOSE, self._searched)
            if at < 0 and not final:
                # a long call arrives token by token: look only at what is new next time
                self._searched = max(0, len(self._text) - len(CLOSE) + 1)
                return out
            self._searched = 0
            body = self._text if at < 0 else self._text[:at]
            raw = OPEN + (self._text if at < 0 else self._text[: at + len(CLOSE)])
            self._text = "" if at < 0 else self._text[at + len(CLOSE) :]
            self._inside = False
            self._block(out, body, raw)
            if at < 0:
                return out

    def _block(self, out: Out, body: str, raw: str) -> None:
        try:
            call = json.loads(body)
        except (ValueError, RecursionError):
            call = None
        name = call.get("name") if isinstance(call, dict) else None
        if name not in self.use.names:
            self._content(out, raw)  # not a call this request allows: the model's own text
            return
        if self.calls_made and not self.use.parallel:
            return  # parallel_tool_calls false: the first call only
        arguments = call.get("arguments", call.get("parameters", {}))  # type: ignore[union-attr]
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        out.calls.append(call_json(self.calls_made, name, arguments))  # type: ignore[arg-type]
        self.calls_made += 1

    def _content(self, out: Out, text: str) -> None:
        if not text:
            return
        if not self._spoke and not text.strip():
            self._held_space += text  # all whitespace so far: null content if calls follow
            return
        out.content += self._held_space + text
        self._held_space, self._spoke = "", True
