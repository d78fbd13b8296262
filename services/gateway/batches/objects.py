"""The Files and Batch APIs' objects, as OpenAI spells them (plain dicts), and their ids.

A batch's life: ``in_progress`` (its input file checked at creation: a bad one ends it
``failed`` at once, with ``errors``, as OpenAI's ``validating`` step does) -> ``finalizing``
-> ``completed``; or ``cancelling`` -> ``cancelled``; or, when the 24 h window closes first,
``expired``.  ``TERMINAL`` statuses never change again.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

FILE_ID = re.compile(r"file-[0-9a-f]{32}")
BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")
PURPOSES = ("batch", "batch_output")  # what an upload may declare, and what outputs are
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_METADATA = 16  # OpenAI: 16 pairs, keys up to 64 characters, values up to 512
MAX_ERRORS = 20  # a failed batch lists its first problems, not thousands
MAX_ERROR_TEXT = 200  # characters of one error's message or param (a custom_id is up to 512)


def new_file_id() -> str:
    return f"file-{secrets.token_hex(16)}"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(16)}"


def file_object(
    file_id: str, filename: str, purpose: str, size: int, now: int, life_s: int
) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": now,
        "expires_at": now + life_s,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }


def batch_object(
    batch_id: str,
    endpoint: str,
    input_file_id: str,
    window: str,
    metadata: dict[str, str] | None,
    now: int,
    expires_at: int,
) -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": window,
        "status": "in_progress",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": now,
        "expires_at": expires_at,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }


def failed(batch: dict[str, Any], errors: list[dict[str, Any]], now: int) -> dict[str, Any]:
    """``batch`` ended before any request ran: its input was refused.  Its first
    ``MAX_ERRORS`` problems, their texts clipped: a stored batch stays a few KiB."""
    return {
        **batch,
        "status": "failed",
        "failed_at": now,
        "in_progress_at": None,
        "errors": {"object": "list", "data": [_clipped(e) for e in errors[:MAX_ERRORS]]},
    }


def _clipped(error: dict[str, Any]) -> dict[str, Any]:
    def clip(v: Any) -> Any:
        return (
            v[: MAX_ERROR_TEXT - 1] + "…" if isinstance(v, str) and len(v) > MAX_ERROR_TEXT else v
        )

    return {k: clip(v) for k, v in error.items()}


def result_line(custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """One line of the output (status 200) or error file: the request's answer."""
    return {
        "id": f"batch_req_{secrets.token_hex(16)}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": secrets.token_hex(16), "body": body},
        "error": None,
    }


def too_large_line(custom_id: str, status: int, message: str) -> dict[str, Any]:
    """One line of the error file for a request whose answer was not kept (too large for the
    line's cap or the tenant's file budget): an OpenAI error body, as a refused request has."""
    error = {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "batch_output_too_large",
    }
    return result_line(custom_id, status, {"error": error})


def unanswered_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """One line of the error file for a request that never ran (cancelled, expired)."""
    return {
        "id": f"batch_req_{secrets.token_hex(16)}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
