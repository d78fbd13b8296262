"""A request's output constraint, from whichever field states it (one at most):

- OpenAI ``response_format``: ``{"type": "json_object"}`` or ``{"type": "json_schema",
  "json_schema": {"name": ..., "schema": {...}}}`` (``"text"`` means none);
- vLLM ``structured_outputs``: ``{"json" | "regex" | "choice" | "grammar" | "json_object": ...}``;
- vLLM's older ``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar``.

The constraint is parsed and compiled here (no tokenizer needed), so a bad schema, regex or
grammar is a 400 naming its field before anything is queued; workers compile it again against
the vocabulary.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from loraplex.errors import InvalidRequestError
from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.schemas import GenerateRequest
from loraplex.structured_outputs import KINDS, StructuredOutputsParams

_GUIDED = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}


def _from_response_format(rf: dict[str, Any]) -> dict[str, Any] | None:
    kind = rf.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidParamError(
                "response_format json_schema needs json_schema.schema (an object)",
                "response_format",
            )
        return {"json": schema}
    raise InvalidParamError(f"response_format {kind!r} is not supported", "response_format")


def _stated(req: GenerateRequest) -> list[tuple[str, dict[str, Any]]]:
    """(field, constructor arguments) of every field that states a constraint."""
    out = []
    if req.response_format is not None:
        args = _from_response_format(req.response_format)
        if args is not None:
            out.append(("response_format", args))
    if req.structured_outputs:
        unknown = set(req.structured_outputs) - set(KINDS)
        if unknown:
            raise InvalidParamError(
                f"structured_outputs: unknown field(s) {sorted(unknown)}; use one of {KINDS}",
                "structured_outputs",
            )
        out.append(("structured_outputs", dict(req.structured_outputs)))
    for name, kind in _GUIDED.items():
        if getattr(req, name) is not None:
            out.append((name, {kind: getattr(req, name)}))
    return out


@dataclass(frozen=True)
class Constraint:
    """A parsed output constraint and the request field that stated it (errors name it)."""

    params: StructuredOutputsParams
    param: str
    what: str = ""  # what the constraint is, for its errors ("a tool's parameters schema")

    async def compiled(self) -> StructuredOutputsParams:
        """The constraint once xgrammar accepts it.  The compile runs in a thread (xgrammar
        releases the GIL), so a slow one never stalls the gateway's other requests."""
        try:
            await asyncio.to_thread(self.params.check)
        except InvalidRequestError as e:
            message = f"{self.what} cannot be used: {e}" if self.what else str(e)
            raise InvalidParamError(message, self.param) from e
        return self.params


def structured_outputs(req: GenerateRequest) -> Constraint | None:
    """The request's constraint, parsed (not compiled: ``Constraint.compiled``);
    InvalidParamError names the field that is wrong."""
    stated = _stated(req)
    if not stated:
        return None
    if len(stated) > 1:
        names = ", ".join(name for name, _ in stated)
        raise InvalidParamError(f"give one output constraint, not several ({names})", stated[1][0])
    name, args = stated[0]
    if isinstance(args.get("choice"), list):
        args["choice"] = tuple(args["choice"])
    try:
        return Constraint(StructuredOutputsParams(**args), name)
    except (InvalidRequestError, TypeError) as e:
        raise InvalidParamError(str(e), name) from e
