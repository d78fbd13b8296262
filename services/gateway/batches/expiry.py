"""How long a file lives: OpenAI's ``expires_after`` of an upload (``POST /v1/files``) and a
batch's ``output_expires_after`` (its output and error files), both ``{"anchor": "created_at",
"seconds": N}`` with N from 1 hour to 30 days.  A file never outlives the store's own
``ttl_s`` (``--batch-*`` limits): a longer ask is cut to it, and the file's ``expires_at`` says
so.  Without one a file lives ``ttl_s``.  Plain Python."""

from __future__ import annotations

from typing import Any

from loraplex.gateway.errors import InvalidParamError

MIN_S = 3600  # OpenAI's bounds for expires_after.seconds
MAX_S = 30 * 24 * 3600


def file_life_s(raw: Any, ttl_s: int, param: str) -> int:
    """Seconds the file lives (``InvalidParamError`` naming ``param`` for a bad policy)."""
    if raw is None:
        return ttl_s
    if not isinstance(raw, dict) or set(raw) != {"anchor", "seconds"}:
        raise InvalidParamError(f"{param} must be {{anchor: 'created_at', seconds: N}}", param)
    if raw["anchor"] != "created_at":
        raise InvalidParamError(f"{param}.anchor must be 'created_at'", f"{param}.anchor")
    seconds = raw["seconds"]
    if isinstance(seconds, str) and seconds.isdigit() and len(seconds) < 12:
        seconds = int(seconds)  # a multipart form sends it as text
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not MIN_S <= seconds <= MAX_S:
        raise InvalidParamError(
            f"{param}.seconds must be an integer from {MIN_S} (1 hour) to {MAX_S} (30 days)",
            f"{param}.seconds",
        )
    return min(seconds, ttl_s)
