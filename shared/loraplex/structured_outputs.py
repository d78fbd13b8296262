"""Structured outputs (vLLM's ``StructuredOutputsParams``): constrain generation to a JSON schema,
any JSON object, a regular expression, one of several strings, or an EBNF grammar.

Grammars are compiled and enforced by xgrammar (vLLM's default backend): each step, the tokens
that cannot continue a valid output get -inf before sampling.  This module is the request-side
description only (torch-free); the engine's ``engine/structured.py`` applies it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from loraplex.errors import InvalidRequestError

KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of: ``json`` (a JSON schema, as a dict or its text), ``json_object`` (any JSON
    object), ``regex``, ``choice`` (the output is one of these strings) or ``grammar`` (EBNF in
    xgrammar's GBNF dialect: ``root ::= ...``)."""

    json: str | dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.json, dict):
            object.__setattr__(self, "json", json.dumps(self.json))  # keeps property order
        if self.choice is not None:
            object.__setattr__(self, "choice", tuple(self.choice))
        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise InvalidRequestError(
                f"structured outputs need exactly one of {', '.join(KINDS)}; got {given or 'none'}"
            )
        if self.choice is not None and (
            not self.choice or not all(isinstance(c, str) and c for c in self.choice)
        ):
            raise InvalidRequestError("choice must be a non-empty list of non-empty strings")

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    @property
    def spec(self) -> str:
        """The constraint as text: schema JSON, regex, EBNF, choices as a JSON list, or ""."""
        value = getattr(self, self.kind)
        if self.kind == "choice":
            return json.dumps(list(value))
        return "" if value is True else str(value)

    def ebnf(self) -> str | None:
        """``choice`` as an EBNF grammar (literals escaped as JSON strings); None otherwise."""
        if self.choice is None:
            return None
        return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in self.choice)

    def check(self) -> None:
        """Parse the constraint (no tokenizer needed); InvalidRequestError says what is wrong."""
        import xgrammar as xgr

        try:
            if self.kind == "json":
                json.loads(self.spec)
                xgr.Grammar.from_json_schema(self.spec, any_whitespace=False)
            elif self.kind == "regex":
                xgr.Grammar.from_regex(self.spec)
            elif self.kind in ("grammar", "choice"):
                xgr.Grammar.from_ebnf(self.ebnf() or self.spec)
        except (RuntimeError, ValueError) as e:
            raise self.error(e) from e

    def error(self, e: Exception) -> InvalidRequestError:
        """xgrammar's complaint about this constraint as an InvalidRequestError."""
        # xgrammar prefixes "[time] file:line: "; the rest is the useful part.
        reason = re.sub(r"^\[[\d:]+\] \S+: ", "", str(e).strip())
        return InvalidRequestError(f"invalid {self.kind} for structured output: {reason}")
