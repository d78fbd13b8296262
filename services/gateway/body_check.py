"""Refuse JSON bodies that are not clean Unicode text before any route reads them.

JSON can carry what no tokenizer, msgpack packer or response encoder accepts: a ``\\ud800``
escape decodes to a lone surrogate (and Python's ``json`` also lets UTF-8-encoded surrogates
through).  Such strings used to surface as 500s, after which the server dropped the keep-alive
connection.  This pure ASGI middleware reads each JSON body (``application/json`` or
``application/*+json``, what the routes parse) and answers 400 with the OpenAI error body, with
``param`` naming the field (``messages.0.content``), for:

* bytes that are not valid UTF-8 (or the UTF-16/32 that JSON's encoding detection allows);
* a lone surrogate in any string, object key or value;
* a NUL character outside the generation text (``prompt``, ``messages``, ``stop``): in model
  and adapter names, paths and other identifiers it is only ever a mistake or an attack, while
  vLLM tokenizes a NUL inside text like any other character.

Malformed JSON is left to the routes ("not valid JSON").  Only a body whose text holds a
``\\u`` escape of a surrogate or of NUL is parsed here, so ordinary requests pay one decode and
one regex search.  Bodies above ``max_bytes`` (only the adapter upload routes, which the body
limit exempts, can send them) pass unchecked.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplex.gateway.errors import InvalidParamError, error_response

TEXT_FIELDS = frozenset({"prompt", "messages", "stop"})  # top-level keys where NUL is text
_SUSPECT = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")  # escapes of surrogates and NUL
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def body_problem(body: bytes) -> InvalidParamError | None:
    """The 400 for this JSON body, or None when it is clean (or not JSON at all)."""
    encoding = json.detect_encoding(body)
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as e:
        return InvalidParamError(
            f"request body is not valid {e.encoding.upper()} text (bad byte at offset {e.start})",
            None,
            "invalid_encoding",
        )
    if not _SUSPECT.search(text):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None  # the route answers "not valid JSON"
    return value_problem(value)


def value_problem(value: Any) -> InvalidParamError | None:
    """The 400 for a decoded JSON request body (a dict, as the routes take it), or None: the
    first bad string in document order (iterative: nesting depth is the client's)."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            text = bool(path) and path[0] in TEXT_FIELDS
            problem = _string_problem(v, allow_nul=text)
            if problem is not None:
                return _refusal(path, problem)
        elif isinstance(v, dict):
            for key in v:
                problem = _string_problem(key, allow_nul=False)
                if problem is not None:
                    return _refusal((*path, key), f"key {problem}")
            stack.extend(((*path, k), item) for k, item in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend(((*path, i), item) for i, item in reversed(list(enumerate(v))))
    return None


def _string_problem(s: str, allow_nul: bool) -> str | None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(s[e.start])
        return f"contains a lone surrogate (U+{code:04X}), which is not valid Unicode"
    if not allow_nul and "\x00" in s:
        return "contains a NUL character, which is not allowed here"
    return None


def _refusal(path: tuple[str | int, ...], problem: str) -> InvalidParamError:
    # The path is echoed, so its own bad characters are escaped (the answer must encode).
    param = ".".join(
        str(p).encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00") for p in path
    )
    return InvalidParamError(
        f"{param}: {problem}" if param else problem, param or None, "invalid_value"
    )


def _is_json(scope: Scope) -> bool:
    ctype = dict(scope.get("headers") or []).get(b"content-type", b"")
    media = ctype.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class BodyCheckMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more and size <= self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":  # disconnected while sending the body
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not more:
            problem = body_problem(body)
            if problem is not None:
                await error_response(problem)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": more}
            return await receive()

        await self.app(scope, replay, send)
