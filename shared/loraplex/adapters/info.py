"""``AdapterInfo``: an adapter's metadata, as stored in Redis and as shown over HTTP."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loraplex.adapters.keys import adapter_id
from loraplex.errors import AdapterError

VISIBILITIES = ("private", "public")


def check_visibility(value: str) -> str:
    if value not in VISIBILITIES:
        raise AdapterError(f"visibility must be one of {', '.join(VISIBILITIES)}, got {value!r}")
    return value


@dataclass(frozen=True)
class AdapterInfo:
    """One registered adapter version.  ``sha256`` is of adapter_model.safetensors, whose size is
    ``size_bytes``; ``created`` is when this version was registered (unix seconds).  ``name`` is
    what its tenants see; ``id`` (``owner/name``) is what the store and the workers key it by."""

    name: str
    owner: str
    visibility: str
    rank: int
    alpha: float
    targets: tuple[str, ...]
    size_bytes: int
    sha256: str
    created: float
    version: int
    # storage layout (not part of the HTTP view)
    config_sha256: str = ""
    chunk_size: int = 0
    chunks: int = 0
    # False after vLLM's unload: kept, but not served (no model card, 404 for requests) until
    # loaded again; registering a version serves it
    served: bool = True
    # the path a path registration was read from, as its owner gave it (empty for multipart);
    # shown only to the owner (``/v1/models`` root), never to other tenants
    source: str = ""

    @property
    def id(self) -> str:
        return adapter_id(self.owner, self.name)

    @property
    def public(self) -> bool:
        return self.visibility == "public"

    def visible_to(self, tenant: str) -> bool:
        return self.public or self.owner == tenant

    def to_redis(self) -> dict[str, str]:
        return {
            "name": self.name,
            "owner": self.owner,
            "visibility": self.visibility,
            "rank": str(self.rank),
            "alpha": repr(self.alpha),
            "targets": json.dumps(list(self.targets)),
            "size_bytes": str(self.size_bytes),
            "sha256": self.sha256,
            "created": repr(self.created),
            "version": str(self.version),
            "config_sha256": self.config_sha256,
            "chunk_size": str(self.chunk_size),
            "chunks": str(self.chunks),
            "served": "1" if self.served else "0",
            "source": self.source,
        }

    @classmethod
    def from_redis(cls, raw: Mapping[bytes | str, bytes | str]) -> AdapterInfo:
        d = {_s(k): _s(v) for k, v in raw.items()}
        return cls(
            name=d["name"],
            owner=d["owner"],
            visibility=d["visibility"],
            rank=int(d["rank"]),
            alpha=float(d["alpha"]),
            targets=tuple(json.loads(d["targets"])),
            size_bytes=int(d["size_bytes"]),
            sha256=d["sha256"],
            created=float(d["created"]),
            version=int(d["version"]),
            config_sha256=d.get("config_sha256", ""),
            chunk_size=int(d.get("chunk_size", 0)),
            chunks=int(d.get("chunks", 0)),
            served=d.get("served", "1") != "0",
            source=d.get("source", ""),
        )

    def to_json(self, viewer: str | None = None) -> dict[str, Any]:
        """The HTTP view (``GET /v1/adapters/{name}``): the bare name, never the internal id.
        To a ``viewer`` other than its owner (a public adapter) it names no tenant and no count
        of the owner's registrations: ``owner`` is ``"public"`` and ``version`` None."""
        theirs = viewer is not None and viewer != self.owner
        return {
            "id": self.name,
            "object": "adapter",
            "name": self.name,
            "owner": "public" if theirs else self.owner,
            "visibility": self.visibility,
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "created": int(self.created),
            "version": None if theirs else self.version,
            "served": self.served,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AdapterInfo:
        return cls(
            name=d["name"],
            owner=d["owner"],
            visibility=d["visibility"],
            rank=int(d["rank"]),
            alpha=float(d["alpha"]),
            targets=tuple(d["targets"]),
            size_bytes=int(d["size_bytes"]),
            sha256=d["sha256"],
            created=float(d["created"]),
            version=int(d["version"]),
            served=bool(d.get("served", True)),
        )


@dataclass(frozen=True)
class Registered:
    """What ``AdapterStore.register`` did."""

    info: AdapterInfo
    replaced: AdapterInfo | None  # the previous version, when this registration replaced one


@dataclass(frozen=True)
class FetchedAdapter:
    """The live version of an adapter as read by a worker (sha256 verified)."""

    info: AdapterInfo
    config_bytes: bytes
    weights_bytes: bytes


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
