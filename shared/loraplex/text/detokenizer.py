"""Incremental detokenization and stop-string matching for one output stream."""

from __future__ import annotations

from loraplex.text.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window (from ``prefix`` to the end) and emits only what extends the already
    emitted text, holding back incomplete UTF-8 sequences (shown as U+FFFD) until they complete.
    When a stop string appears, the text is cut before it (after it with ``include_stop``) and
    ``stopped`` is set.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: tuple[str, ...] = (),
        skip_special_tokens: bool = True,
        context_ids: list[int] | None = None,
        include_stop: bool = False,
    ) -> None:
        self.tok = tokenizer
        self.stop = stop
        self.include_stop = include_stop  # keep the stop string that matched in the text
        self.skip = skip_special_tokens
        # Start with a few prompt tokens as context so the first output token decodes with the
        # right leading space (byte-level and SentencePiece tokenizers depend on it).
        self.ids: list[int] = list(context_ids[-4:]) if context_ids else []
        self.prefix = 0
        self.read = len(self.ids)
        self.text = ""  # emitted so far
        self.stopped: str | None = None
        self._held = ""  # decoded text withheld because it may be the start of a stop string

    def append(self, token_id: int) -> str:
        """Add one token; return the new text that may be shown (possibly empty)."""
        if self.stopped is not None:
            return ""
        self.ids.append(token_id)
        prefix_text = self.tok.decode(self.ids[self.prefix : self.read], self.skip)
        full = self.tok.decode(self.ids[self.prefix :], self.skip)
        if full.endswith("\ufffd") or len(full) <= len(prefix_text):
            return ""
        new = full[len(prefix_text) :]
        self.prefix, self.read = self.read, len(self.ids)
        return self._emit(new)

    def _emit(self, new: str) -> str:
        pending = self._held + new
        if self.stop:
            start = max(0, len(self.text) - max(len(s) for s in self.stop))
            window = self.text[start:] + pending
            old = len(self.text) - start
            for s in self.stop:
                # Only a match that ends in the new text: stop strings may be turned on late
                # (min_tokens), and text already shown is not looked at again (vLLM).
                pos = window.find(s, max(0, old - len(s) + 1))
                if pos >= 0:
                    cut = start + pos - len(self.text)  # index into pending where the stop begins
                    out = pending[: cut + len(s) if self.include_stop else max(cut, 0)]
                    self.text += out
                    self._held = ""
                    self.stopped = s
                    return out
            # Hold back a tail that could still grow into a stop string.
            hold = max((tail_overlap(pending, s) for s in self.stop), default=0)
            out, self._held = pending[: len(pending) - hold], pending[len(pending) - hold :]
        else:
            out = pending
        self.text += out
        return out

    def flush(self) -> str:
        """At the end of the stream, release what was held back: an incomplete UTF-8 tail (shown
        as U+FFFD, as ``decode`` shows it) and text kept for stop matching."""
        out = ""
        if self.stopped is None and self.read < len(self.ids):
            prefix_text = self.tok.decode(self.ids[self.prefix : self.read], self.skip)
            full = self.tok.decode(self.ids[self.prefix :], self.skip)
            if len(full) > len(prefix_text):
                self.prefix, self.read = self.read, len(self.ids)
                out = self._emit(full[len(prefix_text) :])
        if self.stopped is None:
            out += self._held
            self.text += self._held
        self._held = ""
        return out


def tail_overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``: what to
    hold back of a stream that may still grow into ``stop`` (a stop string, a tag)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0
