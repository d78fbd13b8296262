"""Typed errors of the adapter registry.  Only the HTTP edge maps them to status codes.

``AdapterNotFoundError`` (404) and ``AdapterError`` (400, invalid adapter) live in
``loraplex.errors``; these are the registry-specific ones.
"""

from __future__ import annotations

from loraplex.errors import AdapterNotFoundError, LoraplexError

__all__ = [
    "AdapterExistsError",
    "AdapterForbiddenError",
    "AdapterIntegrityError",
    "AdapterNotFoundError",
    "AdapterPathError",
    "AdapterQuotaError",
    "AdapterTooLargeError",
    "StoreUnavailableError",
    "UploadLimitError",
]


class AdapterExistsError(LoraplexError):
    """The name is taken (409): by the caller (pass replace) or by another tenant."""


class AdapterTooLargeError(LoraplexError):
    """The upload exceeds the server's adapter size limit (413)."""


class AdapterForbiddenError(LoraplexError):
    """The caller can see the adapter (it is public) but does not own it (403)."""


class AdapterQuotaError(LoraplexError):
    """Storing the adapter would take its owner past its adapter count or storage quota (403)."""


class AdapterPathError(LoraplexError):
    """A server-side path registration points outside the adapters root, or is disabled (403)."""


class AdapterIntegrityError(LoraplexError):
    """Stored bytes do not match their sha256, or chunks are missing: the copy is corrupt."""


class StoreUnavailableError(LoraplexError):
    """Redis cannot be reached (503); the client retries, the caller may retry later."""


class UploadLimitError(LoraplexError):
    """The tenant already has as many uploads in progress as the server allows (429)."""
