"""Reasoning out of a chat answer's text (vLLM's ``--reasoning-parser``), streamed or whole.

Reasoning models write their thinking between ``<think>`` and ``</think>``, then the answer.
With a parser set, the gateway answers the thinking as ``message.reasoning`` (and, under its older
vLLM name, ``reasoning_content``) and only the rest as ``content``:

- ``deepseek_r1``: the answer starts inside the thinking (DeepSeek-R1 and Qwen3-Thinking
  templates open ``<think>`` in the prompt; an opening tag the model writes anyway is dropped),
  which ends at ``</think>``.  An answer cut short before it is all reasoning.
- ``qwen3``: the answer thinks only when it opens with ``<think>`` (Qwen3 with thinking on);
  otherwise all of it is content (``enable_thinking: false`` in ``chat_template_kwargs``).
Whitespace that opens the content after ``</think>`` is dropped.  A request whose output is
constrained (structured outputs, a required or named tool) is not read for reasoning: its
grammar holds from the first token.  Like ``tool_calls.py``, one stream per choice; a whole
answer is the same stream fed at once, so both always agree.  Plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.text.detokenizer import tail_overlap

OPEN, CLOSE = "<think>", "</think>"
PARSERS = ("none", "deepseek_r1", "qwen3")


@dataclass
class Split:
    """What one feed gives the client: reasoning text and content text."""

    reasoning: str = ""
    content: str = ""


class ReasoningStream:
    def __init__(self, parser: str) -> None:
        assert parser in PARSERS[1:], parser
        self.parser = parser
        # "start": nothing decided yet; "thinking"; "answer" (after </think>: leading whitespace
        # dropped); "content" (plain text from here on).
        self._state = "start"
        self._text = ""  # not given out yet
        self.thought = False  # the answer opened with thinking (reasoning may still be empty)

    def feed(self, text: str) -> Split:
        self._text += text
        return self._advance(final=False)

    def finish(self) -> Split:
        return self._advance(final=True)

    def _advance(self, final: bool) -> Split:
        out = Split()
        while True:
            if self._state == "start":
                head = self._text.lstrip()
                if head.startswith(OPEN):
                    self._text, self._state = head[len(OPEN) :], "thinking"
                elif OPEN.startswith(head) and not final:
                    return out  # may still become <think>
                else:
                    self._state = "thinking" if self.parser == "deepseek_r1" else "content"
                self.thought = self._state == "thinking"
            elif self._state == "thinking":
                at = self._text.find(CLOSE)
                if at < 0:
                    keep = 0 if final else tail_overlap(self._text, CLOSE)
                    out.reasoning += self._text[: len(self._text) - keep]
                    self._text = self._text[len(self._text) - keep :]
                    return out
                out.reasoning += self._text[:at]
                self._text, self._state = self._text[at + len(CLOSE) :], "answer"
            elif self._state == "answer":
                self._text = self._text.lstrip()
                if not self._text:
                    return out
                self._state = "content"
            else:
                out.content += self._text
                self._text = ""
                return out
