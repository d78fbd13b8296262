"""Typed exceptions raised inside loraplex; only the HTTP edge turns them into status codes."""

from __future__ import annotations


class LoraplexError(Exception):
    """Base class of every error loraplex raises on purpose."""


class ModelLoadError(LoraplexError):
    """A model directory is missing files or holds weights that do not fit its config."""


class UnsupportedModelError(ModelLoadError):
    """The checkpoint's architecture (or a feature of it) is not supported."""


class AdapterError(LoraplexError):
    """An adapter cannot be used with the served base model; the message says why."""


class AdapterNotFoundError(LoraplexError):
    """A request names an adapter that is not registered."""


class InvalidRequestError(LoraplexError):
    """Request parameters are invalid (bad sampling values, prompt too long, ...)."""


class CapacityError(LoraplexError):
    """The engine cannot hold the request at all (e.g. more KV blocks than exist)."""
