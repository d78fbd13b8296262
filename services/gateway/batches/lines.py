"""A batch's input file: one JSON request per line, checked before anything runs.

Each line is ``{"custom_id": ..., "method": "POST", "url": <the batch's endpoint>, "body": {...}}``
(OpenAI's format, which ``vllm run-batch`` and SGLang read too).  Every line is held to what the
HTTP edge holds a request body to (``body_check.value_problem``: UTF-8, no lone surrogates, no NUL
outside the body's text); ``custom_id`` values are unique; ``stream`` is refused.  The body itself is
validated when its request runs, so a bad body fails that request only (a 400 in the error file),
as on OpenAI.  Blank lines are skipped.  Problems are collected with their 1-based line numbers; the
first ``MAX_ERRORS`` become the failed batch's ``errors``.  Plain Python.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loraplex.gateway.batches.objects import MAX_ERRORS
from loraplex.gateway.body_check import value_problem

MAX_CUSTOM_ID = 512  # characters


@dataclass(frozen=True)
class BatchLine:
    index: int  # 0-based position among the file's requests: the order of the output file
    custom_id: str
    body: dict[str, Any]


class BatchInputError(Exception):
    """The input file cannot run; ``errors``: OpenAI's ``{code, message, param, line}`` items."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"] if errors else "invalid input file")
        self.errors = errors


def _error(line: int | None, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": "invalid_request", "message": message, "param": param, "line": line}


def check_input(content: bytes, endpoint: str, max_lines: int) -> int:
    """How many requests the input file holds; ``BatchInputError`` listing every problem.
    (A 64 MiB file takes a while: call it off the event loop.)"""
    count = sum(1 for _ in _raw_lines(content))
    if not count:
        raise BatchInputError([_error(None, "the input file holds no requests")])
    if count > max_lines:
        raise BatchInputError([_error(
            None, f"the input file holds {count} requests; a batch may hold {max_lines}"
        )])  # fmt: skip
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in _raw_lines(content):
        problem = _line_problem(raw, number, endpoint, seen)
        if isinstance(problem, dict):
            errors.append(problem)
            if len(errors) >= MAX_ERRORS:
                break
    if errors:
        raise BatchInputError(errors)
    return count


def iter_lines(content: bytes, endpoint: str) -> Iterator[BatchLine]:
    """The requests of a checked input file, parsed one at a time as they are needed: a running
    batch holds its file's bytes, never all of its requests decoded at once."""
    seen: set[str] = set()
    for index, (number, raw) in enumerate(_raw_lines(content)):
        problem = _line_problem(raw, number, endpoint, seen)
        if not isinstance(problem, dict):
            yield BatchLine(index, *problem)


def _raw_lines(content: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) of every line that is not blank, without copying the file."""
    start, number = 0, 0
    while start < len(content):
        end = content.find(b"\n", start)
        end = len(content) if end < 0 else end
        number += 1
        raw = content[start:end]
        start = end + 1
        if raw.strip():
            yield number, raw


def _line_problem(
    raw: bytes, number: int, endpoint: str, seen: set[str]
) -> dict[str, Any] | tuple[str, dict[str, Any]]:
    """The line's (custom_id, body), or its error item."""
    try:
        item = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return _error(number, f"line {number} is not valid UTF-8 (bad byte at offset {e.start})")
    except (ValueError, RecursionError):
        return _error(number, f"line {number} is not valid JSON")
    if not isinstance(item, dict):
        return _error(number, f"line {number} is not a JSON object")
    # as the HTTP edge checks a body: the request body on its own (NUL is text in its messages)
    envelope = {k: v for k, v in item.items() if k != "body"}
    bad, where = value_problem(envelope), ""
    if bad is None and isinstance(item.get("body"), dict):
        bad, where = value_problem(item["body"]), "body."
    if bad is not None:
        param = where + (bad.param or "")
        return _error(number, f"line {number}: {where}{bad}", param)
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
        return _error(
            number, f"line {number}: custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters",
            "custom_id",
        )  # fmt: skip
    if custom_id in seen:
        return _error(number, f"line {number}: custom_id {custom_id!r} is used twice", "custom_id")
    seen.add(custom_id)
    if item.get("method") != "POST":
        return _error(number, f"line {number}: method must be POST", "method")
    if item.get("url") != endpoint:
        return _error(
            number, f"line {number}: url must be the batch's endpoint {endpoint!r}", "url"
        )
    body = item.get("body")
    if not isinstance(body, dict):
        return _error(number, f"line {number}: body must be a JSON object", "body")
    if body.get("stream"):
        return _error(number, f"line {number}: stream is not supported in a batch", "body.stream")
    unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if unknown:
        return _error(number, f"line {number}: unknown field(s) {', '.join(unknown)}")
    return custom_id, body
