"""Tool calling on ``POST /v1/chat/completions``: the request side (OpenAI's ``tools``,
``tool_choice`` and ``parallel_tool_calls``, as vLLM serves them).

- ``tool_choice`` ``"none"``: nothing is parsed; the tools still go to the chat template, as in
  vLLM (the model knows them, it may not call them), unless the gateway runs with
  ``--exclude-tools-when-tool-choice-none``.
- ``"auto"`` (the default when ``tools`` are given): the tools go to the chat template and the
  output is parsed for calls by the gateway's ``--tool-call-parser`` (``tool_calls.py``); with the
  parser off, ``"auto"`` is a 400, as in vLLM without ``--enable-auto-tool-choice``.
- ``"required"`` and a named function: generation is constrained (structured outputs) to a JSON
  array of ``{"name", "parameters"}`` calls, or to the named function's parameters, so the answer
  always parses (vLLM's method).  Their schemas are compiled before anything is queued, so a
  bad one is a 400 naming ``tools``.
Plain Python; every failure is an ``InvalidParamError`` naming its field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from loraplex.errors import InvalidRequestError
from loraplex.gateway.errors import InvalidParamError
from loraplex.structured_outputs import StructuredOutputsParams

MAX_TOOLS = 128  # OpenAI's limit
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PARSERS = ("hermes", "none")
CHOICES = ("none", "auto", "required")


@dataclass(frozen=True)
class Tool:
    name: str
    spec: dict[str, Any]  # the client's ``{"type": "function", "function": {...}}``, as sent

    @property
    def parameters(self) -> dict[str, Any]:
        """The function's JSON schema; a function without one takes any object."""
        return self.spec["function"].get("parameters") or {"type": "object"}


@dataclass(frozen=True)
class ToolUse:
    """What a chat request asked of its tools.  ``choice`` is ``auto``, ``required`` or
    ``named`` (``ToolUse`` is None for ``none``); ``named`` is the function for ``named``."""

    tools: tuple[Tool, ...]
    choice: str
    named: str | None = None
    parallel: bool = True

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tools)

    def template_tools(self) -> list[dict[str, Any]]:
        """What the chat template receives as ``tools`` (transformers' convention)."""
        return [t.spec for t in self.tools]

    def constraint(self) -> StructuredOutputsParams | None:
        """The output constraint of ``required`` and ``named``; None for ``auto``."""
        if self.choice == "named":
            tool = next(t for t in self.tools if t.name == self.named)
            return _compiled(tool.parameters)
        if self.choice != "required":
            return None
        calls: list[dict[str, Any]] = []
        defs: dict[str, Any] = {}
        for t in self.tools:
            # The tools' own "$defs" move to the array's root, where their "#/$defs/..." refs
            # point once the schemas are nested (pydantic's schemas use them; vLLM does this too).
            parameters = dict(t.parameters)
            for name, sub in (parameters.pop("$defs", None) or {}).items():
                if defs.get(name, sub) != sub:
                    raise InvalidParamError(
                        f"tools define $defs {name!r} differently; give the definitions "
                        "different names",
                        "tools",
                    )
                defs[name] = sub
            calls.append(
                {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": [t.name]},
                        "parameters": parameters,
                    },
                    "required": ["name", "parameters"],
                    "additionalProperties": False,
                }
            )
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        if defs:
            schema["$defs"] = defs
        if not self.parallel:
            schema["maxItems"] = 1
        return _compiled(schema)


def _compiled(schema: dict[str, Any]) -> StructuredOutputsParams:
    """The constraint, parsed; the gateway compiles it (``structured.Constraint``)."""
    try:
        return StructuredOutputsParams(json=schema)
    except InvalidRequestError as e:
        raise InvalidParamError(f"a tool's parameters schema cannot be used: {e}", "tools") from e


def _tool(index: int, raw: Any) -> Tool:
    where = f"tools.{index}"
    if not isinstance(raw, dict) or raw.get("type", "function") != "function":
        raise InvalidParamError(f'{where}: each tool must be {{"type": "function", ...}}', where)
    function = raw.get("function")
    if not isinstance(function, dict):
        raise InvalidParamError(f"{where}.function must be an object", f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise InvalidParamError(
            f"{where}.function.name must be 1 to 64 of a-z, A-Z, 0-9, '_', '.', '-'",
            f"{where}.function.name",
        )
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidParamError(
            f"{where}.function.parameters must be a JSON schema object",
            f"{where}.function.parameters",
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidParamError(
            f"{where}.function.description must be a string", f"{where}.function.description"
        )
    return Tool(name, {"type": "function", "function": function})


def _choice(raw: Any, names: frozenset[str]) -> tuple[str, str | None]:
    if raw is None:
        return ("auto" if names else "none"), None
    if isinstance(raw, str):
        if raw not in CHOICES:
            raise InvalidParamError(
                f"tool_choice must be one of {', '.join(CHOICES)} or a named function",
                "tool_choice",
            )
        return raw, None
    raw = raw if isinstance(raw, dict) else {"type": None}
    function = raw.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if raw.get("type", "function") != "function" or not isinstance(name, str):
        raise InvalidParamError(
            'a named tool_choice is {"type": "function", "function": {"name": ...}}', "tool_choice"
        )
    if name not in names:
        raise InvalidParamError(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
    return "named", name


def tool_use(
    tools: list[Any] | None, tool_choice: Any, parallel: bool | None, parser: str
) -> ToolUse | None:
    """The request's tool use, checked; None when no tool may be called."""
    if tools is not None and len(tools) > MAX_TOOLS:
        raise InvalidParamError(f"at most {MAX_TOOLS} tools, got {len(tools)}", "tools")
    parsed = tuple(_tool(i, t) for i, t in enumerate(tools or ()))
    names = frozenset(t.name for t in parsed)
    if len(names) != len(parsed):
        raise InvalidParamError("tool function names must be unique", "tools")
    if tool_choice not in (None, "none") and not parsed:
        raise InvalidParamError("tool_choice needs tools", "tool_choice")
    choice, named = _choice(tool_choice, names)
    if choice == "none":
        return None
    if choice == "auto" and parser == "none":
        raise InvalidParamError(
            'tool_choice "auto" needs a tool call parser: this gateway runs with '
            '--tool-call-parser none; use "required" or a named function',
            "tool_choice",
        )
    return ToolUse(parsed, choice, named, True if parallel is None else parallel)


def template_tools(
    tools: list[Any] | None, use: ToolUse | None, exclude_when_none: bool
) -> list[dict[str, Any]] | None:
    """What the chat template gets as ``tools``: those the answer may call, or under
    ``tool_choice: "none"`` all of them unless ``exclude_when_none`` (``tool_use`` checked them)."""
    if use is not None:
        return use.template_tools()
    if exclude_when_none or not tools:
        return None
    return [_tool(i, t).spec for i, t in enumerate(tools)]


def template_arguments(arguments: str) -> Any:
    """A past call's ``arguments`` as chat templates expect them: the object, when the text is a
    JSON object (templates ``tojson`` it), else the text as it is (vLLM does the same)."""
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):  # the client's text: any nesting
        return arguments
    return value if isinstance(value, dict) else arguments
