"""Regular expressions from tenants (``target_modules``, ``rank_pattern``, ``alpha_pattern``),
matched so that none can hang the server.

Python's ``re`` backtracks without bound: ``(.*)*x`` against a 32-character module name runs for
minutes, and module names cannot be made shorter.  So patterns are checked with ``re`` (PEFT's
engine: what it refuses, we refuse) but matched with the ``regex`` module, whose matches take a
timeout, all under one time budget per adapter, and without holding the GIL (the server's event
loop runs on while a validation thread matches); patterns are also capped in length and number.
"""

from __future__ import annotations

import re
import time

import regex

from loraplex.errors import AdapterError
from loraplex.lora.names import CONFIG_FILE

MAX_PATTERN_CHARS = 256
MAX_PATTERNS = 4096  # per field: a per-module rank_pattern of a 80-layer model has 560 keys
MATCH_BUDGET_S = 1.0  # all matching of one adapter's patterns, together


def compile_pattern(adapter: str, field: str, text: str, template: str = "{}") -> regex.Pattern:
    """``text`` (a tenant's regex, checked alone) compiled inside ``template``."""
    where = f"adapter {adapter!r}: {CONFIG_FILE} field {field!r} pattern {text[:64]!r}"
    if len(text) > MAX_PATTERN_CHARS:
        raise AdapterError(f"{where} is longer than {MAX_PATTERN_CHARS} characters")
    try:
        re.compile(text)
        return regex.compile(template.format(text), regex.VERSION0)
    except (re.error, regex.error, OverflowError, RecursionError, ValueError) as e:
        raise AdapterError(f"{where} is not a valid regular expression ({e})") from e


class MatchBudget:
    """Matches of tenant patterns for one adapter, refused once ``budget_s`` is spent matching
    (time in the matches only, so a slow box's other work between them does not count)."""

    def __init__(self, adapter: str, budget_s: float = MATCH_BUDGET_S) -> None:
        self.adapter = adapter
        self.budget_s = budget_s
        self.spent = 0.0

    def _expired(self) -> AdapterError:
        return AdapterError(
            f"adapter {self.adapter!r}: its target_modules/rank_pattern/alpha_pattern regular "
            f"expressions take more than {self.budget_s:g} s to match; simplify them"
        )

    def _run(self, match, text: str) -> bool:  # type: ignore[no-untyped-def]
        left = self.budget_s - self.spent
        if left <= 0:
            raise self._expired()
        start = time.monotonic()
        try:
            return match(text, timeout=left, concurrent=True) is not None
        except TimeoutError as e:
            raise self._expired() from e
        finally:
            self.spent += time.monotonic() - start

    def fullmatch(self, pattern: regex.Pattern, text: str) -> bool:
        return self._run(pattern.fullmatch, text)

    def match(self, pattern: regex.Pattern, text: str) -> bool:
        return self._run(pattern.match, text)
