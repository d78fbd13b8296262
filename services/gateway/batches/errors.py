"""Typed errors of the Files and Batch APIs (the gateway's error table maps them to statuses)."""

from __future__ import annotations

from loraplex.errors import LoraplexError


class BatchNotFoundError(LoraplexError):
    """No batch or file of that id for this tenant (404, whoever else has one)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class FilesQuotaError(LoraplexError):
    """The tenant holds as many files, or bytes of them, as it may (403)."""


class BatchLimitError(LoraplexError):
    """The tenant already runs as many batches as it may (429)."""


class BatchStoreUnavailableError(LoraplexError):
    """The store (Redis) cannot be reached: 503; the request may be sent again."""


class ResultTooLargeError(LoraplexError):
    """A batch line's answer is not kept: larger than one line's answer may be (413), or than
    what is left of the tenant's file budget (403).  The run makes it that line's own error in
    the error file; it never reaches a client as an HTTP error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
