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
# Hostile-input bounds.  xgrammar's JSON-schema conversion grows much faster than the nesting
# depth (arrays nested 300 deep: 1.4 s; 1,000 deep: 46 s; objects 400 deep: 6 s, on one core),
# and Python's json recurses per level.  64 levels of the schema document (about 30 levels of
# nested objects) are far more than real schemas use; OpenAI allows 10 levels of objects.
MAX_SCHEMA_DEPTH = 64
MAX_SPEC_CHARS = 256 * 1024  # a constraint's text (a 1 MB enum took 1.7 s to compile)
# Repeats nested in repeats make xgrammar's matcher explode while it runs, not while it compiles:
# ((a{0,10}){0,10}){0,10} took 55 ms per token, ((a{0,20}){0,20}){0,20} 2 s (on one core), where
# two levels ((\d{1,3}\.){3}, (a{1,50}){1,50}) take at most a few ms.  The engine's per-token
# budget (engine/structured.py) catches what this check cannot see (grammars, rule references).
MAX_REPEAT_NESTING = 2


def repeat_nesting(pattern: str) -> int:
    """How deep repeats (``*``, ``+``, ``{m,n}`` with n > 1) nest in a regular expression: 1 for
    ``a*``, 2 for ``(a+b)*``; ``?`` and ``{0,1}`` do not count.  A scan, not a parser: it skips
    escapes and character classes and counts groups by their parentheses."""
    deepest_inside = [0]  # per open group: the deepest repeat nesting inside it so far
    last_atom = 0  # nesting of the atom just closed (a group's inside), a quantifier applies to
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i, last_atom = i + 2, 0
            continue
        if c == "[":
            j = i + 1 + (pattern[i + 1 : i + 2] == "^")
            j += pattern[j : j + 1] == "]"  # a leading ] is a literal
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i, last_atom = j + 1, 0
            continue
        if c == "(":
            deepest_inside.append(0)
        elif c == ")" and len(deepest_inside) > 1:
            last_atom = deepest_inside.pop()
            deepest_inside[-1] = max(deepest_inside[-1], last_atom)
            i += 1
            continue
        elif c in "*+" or (c == "{" and _repeats_more_than_once(pattern, i)):
            deepest_inside[-1] = max(deepest_inside[-1], last_atom + 1)
        last_atom = 0
        i += 1
    return deepest_inside[0]


_COUNTED = re.compile(r"\{(\d*)(,(\d*))?\}")


def _repeats_more_than_once(pattern: str, i: int) -> bool:
    """Whether ``pattern[i:]`` opens a counted repeat whose upper bound is over 1 (or open)."""
    m = _COUNTED.match(pattern, i)  # at i, not on a copy of the rest (quadratic over many braces)
    if m is None:
        return False  # a literal brace
    upper = m.group(3) if m.group(2) else m.group(1)
    digits = upper.lstrip("0")  # compared as text: int() refuses over 4,300 digits
    return upper == "" or len(digits) > 1 or digits > "1"


def _check_repeats(pattern: str, what: str) -> None:
    depth = repeat_nesting(pattern)
    if depth > MAX_REPEAT_NESTING:
        raise InvalidRequestError(
            f"the {what} nests repeats {depth} deep (a repeated group inside a repeated group "
            f"inside a repeated group); at most {MAX_REPEAT_NESTING}: deeper nesting takes "
            "seconds per token to enforce"
        )


def schema_patterns(value: Any) -> list[str]:
    """Every ``pattern`` keyword's regex in a parsed JSON schema (iterative)."""
    out, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            pattern = item.get("pattern")
            if isinstance(pattern, str):
                out.append(pattern)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def nesting_depth(value: Any) -> int:
    """Levels of objects and arrays in a parsed JSON value; iterative (the depth is the
    client's)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_DEPTH:
            break  # deep enough to refuse: no need to walk the rest
        stack.extend((child, depth + 1) for child in children)
    return deepest


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
        if self.json is not None:
            self._check_schema_shape()
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
        size = sum(len(c) for c in self.choice) if self.choice is not None else len(self.spec)
        if size > MAX_SPEC_CHARS:
            raise InvalidRequestError(
                f"the {self.kind} constraint is too long: {size} characters, at most "
                f"{MAX_SPEC_CHARS}"
            )
        if self.regex is not None:
            _check_repeats(self.regex, "regex")

    def _check_schema_shape(self) -> None:
        """Refuse a schema too deep to convert in bounded time (before anything recurses)."""
        schema = self.json
        if isinstance(schema, str):
            if len(schema) > MAX_SPEC_CHARS:
                return  # refused by length in __post_init__, unparsed
            try:
                schema = json.loads(schema)
            except (ValueError, RecursionError):
                return  # not JSON (or absurdly deep): check() says so
        depth = nesting_depth(schema)
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequestError(
                f"the JSON schema nests too deeply: more than {MAX_SCHEMA_DEPTH} levels of "
                "objects and arrays"
            )
        for pattern in schema_patterns(schema):
            _check_repeats(pattern, "JSON schema's pattern")

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
