"""Where the Responses API keeps what ``store: true`` asks for, so a later request can name it by
``previous_response_id``, ``GET`` it, list its input items or ``DELETE`` it.

A stored response is its ``response`` object and the conversation that led to it (``items``: the
input items of every turn so far, each with an ``id``).  Continuing it sends those items, then the
response's output items, then the new input (``responses_api.py``).

**Tenants never meet.**  Every key is the pair (tenant, response id): another tenant's id reads as
absent, with the same 404 as an id never issued, so ids reveal nothing.  **Bounded**: each stored
response lives ``ttl_s`` and is refused (answered ``store: false``) when its JSON passes
``max_bytes``; a tenant keeps at most ``per_tenant`` responses and ``tenant_bytes`` in all, its
oldest dropped first.  So no tenant holds more than ``tenant_bytes``, whatever it sends.

Two stores behind one protocol: ``MemoryResponseStore`` (this process; a gateway without Redis)
and ``RedisResponseStore`` (``response_store_redis.py``; shared by every gateway replica).
Plain Python.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from loraplex.errors import LoraplexError

RESPONSE_ID = re.compile(
    r"resp_[0-9a-f]{32}"
)  # what ResponseStream issues; nothing else is looked up


class ResponseStoreUnavailableError(LoraplexError):
    """The response store (Redis) cannot be reached: 503; the request may be sent again."""


class ResponseNotFoundError(LoraplexError):
    """No stored response of that id for this tenant (404), whoever else may hold the id."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class StoreLimits:
    """How long, how large and how many responses each tenant may keep."""

    ttl_s: int = 3600
    max_bytes: int = 1024 * 1024
    per_tenant: int = 256
    tenant_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.ttl_s, self.max_bytes, self.per_tenant, self.tenant_bytes) < 1:
            raise ValueError("response store limits must be positive")
        if self.max_bytes > self.tenant_bytes:
            raise ValueError("a kept response may not be larger than a tenant's whole budget")


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the response object, as answered
    items: list[dict[str, Any]]  # the conversation's input items, oldest first
    # A background response's generation: the scheduler's request id and the gateway running
    # it (responses_background.py), for a cancel from any replica; never shown.
    owner: dict[str, str] | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {"response": self.response, "items": self.items, "owner": self.owner},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> StoredResponse:
        data = json.loads(raw)
        return cls(data["response"], data["items"], data.get("owner"))


class ResponseStore(Protocol):
    limits: StoreLimits

    async def put(self, tenant: str, record: StoredResponse) -> bool:
        """Keep ``record`` for ``tenant``; False when it is over ``max_bytes`` (not kept).
        Raises ``ResponseStoreUnavailableError`` when the store cannot be reached."""
        ...

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        """``tenant``'s stored response ``response_id``, or None (never stored, expired,
        deleted, dropped, or another tenant's)."""
        ...

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Drop it; False when ``tenant`` has no such response."""
        ...


def well_formed(response_id: str) -> bool:
    """Whether ``response_id`` could have been issued here (others are not looked up)."""
    return RESPONSE_ID.fullmatch(response_id) is not None


class MemoryResponseStore:
    """The in-process store: one gateway's responses, lost when it stops."""

    def __init__(self, limits: StoreLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        # per tenant: response id -> (encoded record, expiry), oldest first
        self._kept: dict[str, OrderedDict[str, tuple[bytes, float]]] = {}

    async def put(self, tenant: str, record: StoredResponse) -> bool:
        raw = record.encode()
        if len(raw) > self.limits.max_bytes:
            return False
        kept = self._live(tenant)
        kept.pop(record.response["id"], None)
        kept[record.response["id"]] = (raw, self.clock() + self.limits.ttl_s)
        total = sum(len(raw) for raw, _ in kept.values())
        while len(kept) > self.limits.per_tenant or total > self.limits.tenant_bytes:
            total -= len(kept.popitem(last=False)[1][0])
        return True

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        hit = self._live(tenant).get(response_id)
        return None if hit is None else StoredResponse.decode(hit[0])

    async def delete(self, tenant: str, response_id: str) -> bool:
        return self._live(tenant).pop(response_id, None) is not None

    def _live(self, tenant: str) -> OrderedDict[str, tuple[bytes, float]]:
        """``tenant``'s responses, the expired ones dropped (they expire in insertion order)."""
        kept = self._kept.setdefault(tenant, OrderedDict())
        now = self.clock()
        while kept and next(iter(kept.values()))[1] <= now:
            kept.popitem(last=False)
        return kept
