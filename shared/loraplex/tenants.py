"""Tenants: who may call the services, under which name, with which fair-share weight.

Loaded from ``--tenants FILE`` (JSON, or YAML for any other suffix)::

    {"tenants": [{"name": "acme", "api_key": "sk-...", "weight": 2.0}]}

A tenant may hold several keys (``"api_keys": ["sk-new", "sk-old"]``, with or without
``api_key``), so a key is rotated without a moment in which neither works.  A key may be written
as its digest, ``sha256:<64 hex digits>`` (``loraplex hash-key``), so the file need not hold
the secret itself.  The services re-read
the file when it changes (``tenants_watch.py``).  Without a file the deployment runs in *open
mode*: every caller is the one tenant ``default``.  API keys are compared in constant time and
never appear in reprs, logs or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraplex.errors import LoraplexError

DEFAULT_TENANT = "default"
DIGEST_PREFIX = "sha256:"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
FIELDS = frozenset(
    {"name", "api_key", "api_keys", "weight", "max_queue", "max_adapters", "max_adapter_storage_mb"}
)
TENANT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TenantsConfigError(LoraplexError):
    """The tenants file is missing, unreadable or invalid; the message says where and why."""


class AuthenticationError(LoraplexError):
    """A request carries no API key, or one that belongs to no tenant."""


@dataclass(frozen=True)
class Tenant:
    name: str
    api_key: str = field(repr=False)  # the first of its keys
    weight: float = 1.0
    more_keys: tuple[str, ...] = field(default=(), repr=False)  # the others (rotation)
    # Requests it may have queued in the scheduler (None: --max-queue-per-tenant)
    max_queue: int | None = None
    # Adapters it may keep stored, and their MiB (None: the adapter-store's flags; 0: no limit)
    max_adapters: int | None = None
    max_adapter_storage_mb: float | None = None

    @property
    def api_keys(self) -> tuple[str, ...]:
        return (self.api_key, *self.more_keys)


def key_digest(api_key: str) -> bytes:
    """The SHA-256 of a key, the form every key is compared in (``sha256:<hex>`` entries of the
    tenants file are this digest already)."""
    if DIGEST.fullmatch(api_key):
        return bytes.fromhex(api_key[len(DIGEST_PREFIX) :])
    return hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class Tenants:
    """The deployment's tenants; ``open_mode`` when no tenants file was given."""

    tenants: tuple[Tenant, ...]
    open_mode: bool = False
    # (digest, tenant) of every key: a request's key is hashed once, compared to each
    _digests: tuple[tuple[bytes, Tenant], ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        pairs = tuple((key_digest(k), t) for t in self.tenants for k in t.api_keys)
        object.__setattr__(self, "_digests", pairs)

    @classmethod
    def open(cls) -> Tenants:
        return cls(tenants=(Tenant(DEFAULT_TENANT, api_key="", weight=1.0),), open_mode=True)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tenants)

    def weights(self) -> dict[str, float]:
        """Fair-share weight per tenant name (the scheduler's)."""
        return {t.name: t.weight for t in self.tenants}

    def queue_limits(self) -> dict[str, int]:
        """The tenants' own queue limits (the others use the scheduler's flag)."""
        return {t.name: t.max_queue for t in self.tenants if t.max_queue is not None}

    def get(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)

    def by_api_key(self, api_key: str | None) -> Tenant | None:
        """The tenant owning ``api_key``; compares against every key in constant time."""
        if self.open_mode:
            return self.tenants[0]
        if not api_key:
            return None
        given = hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).digest()
        found: Tenant | None = None
        for digest, tenant in self._digests:  # no early exit: the time says nothing of which
            if hmac.compare_digest(given, digest):
                found = tenant
        return found

    def authenticate(self, authorization: str | None) -> Tenant:
        """Resolve an ``Authorization: Bearer <key>`` header; raise AuthenticationError if bad."""
        if self.open_mode:
            return self.tenants[0]
        if not authorization:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <api_key>'")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationError("malformed Authorization header: expected 'Bearer <api_key>'")
        tenant = self.by_api_key(key.strip())
        if tenant is None:
            raise AuthenticationError("incorrect API key provided")
        return tenant


def parse_tenants(data: Any, source: str = "tenants config") -> Tenants:
    """Validate the decoded document; every error names the entry and the problem."""
    if not isinstance(data, Mapping) or "tenants" not in data:
        raise TenantsConfigError(f"{source}: expected an object with a 'tenants' list")
    entries = data["tenants"]
    if not isinstance(entries, list) or not entries:
        raise TenantsConfigError(f"{source}: 'tenants' must be a non-empty list")
    tenants: list[Tenant] = []
    names: set[str] = set()
    keys: set[bytes] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: tenants[{i}]"
        if not isinstance(entry, Mapping):
            raise TenantsConfigError(f"{where}: expected an object with name, api_key, weight")
        missing = [k for k in ("name", "api_key") if k not in entry]
        if "api_keys" in entry and "api_key" in missing:
            missing.remove("api_key")  # api_keys alone will do
        if missing:
            raise TenantsConfigError(f"{where}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(entry) - FIELDS)
        if unknown:
            raise TenantsConfigError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
        name = entry["name"]
        if not isinstance(name, str) or not TENANT_NAME_PATTERN.match(name):
            raise TenantsConfigError(
                f"{where}: name {name!r} is invalid: use 1-64 characters [A-Za-z0-9._-], "
                "starting alphanumeric"
            )
        where = f"{source}: tenant {name!r}"
        api_keys = _keys_of(entry, where)
        weight = entry.get("weight", 1.0)
        if not _number(weight):
            raise TenantsConfigError(f"{where}: weight must be a number")
        if not weight > 0 or weight == float("inf"):
            raise TenantsConfigError(f"{where}: weight must be a finite number > 0, got {weight}")
        max_queue = entry.get("max_queue")
        if max_queue is not None and (not _integer(max_queue) or max_queue < 1):
            raise TenantsConfigError(f"{where}: max_queue must be an integer >= 1")
        max_adapters = entry.get("max_adapters")
        if max_adapters is not None and (not _integer(max_adapters) or max_adapters < 0):
            raise TenantsConfigError(f"{where}: max_adapters must be an integer >= 0 (0: no limit)")
        storage_mb = entry.get("max_adapter_storage_mb")
        if storage_mb is not None and (
            not _number(storage_mb) or not 0 <= storage_mb < float("inf")
        ):
            raise TenantsConfigError(
                f"{where}: max_adapter_storage_mb must be a finite number >= 0 (0: no limit)"
            )
        if name in names:
            raise TenantsConfigError(f"{where}: duplicate tenant name")
        digests = [key_digest(k) for k in api_keys]  # a key and its digest are the same key
        if len(set(digests)) < len(digests):  # say which tenant, never the key
            raise TenantsConfigError(f"{where}: api_keys hold the same key twice")
        if keys.intersection(digests):
            raise TenantsConfigError(f"{where}: api_key is already used by another tenant")
        names.add(name)
        keys.update(digests)
        tenants.append(
            Tenant(
                name,
                api_keys[0],
                float(weight),
                tuple(api_keys[1:]),
                max_queue,
                max_adapters,
                None if storage_mb is None else float(storage_mb),
            )
        )
    return Tenants(tenants=tuple(tenants), open_mode=False)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _keys_of(entry: Mapping[str, Any], where: str) -> list[str]:
    """The entry's keys: ``api_key`` first, then ``api_keys``; each a non-empty string."""
    listed = entry.get("api_keys", [])
    if not isinstance(listed, list):
        raise TenantsConfigError(f"{where}: api_keys must be a list of strings")
    api_keys = ([entry["api_key"]] if "api_key" in entry else []) + listed
    if not api_keys:
        raise TenantsConfigError(f"{where}: needs at least one api_key")
    for key in api_keys:
        if not isinstance(key, str) or not key.strip():
            raise TenantsConfigError(f"{where}: api_key must be a non-empty string")
    return api_keys


def load_tenants(path: str | Path | None) -> Tenants:
    """Read a tenants file (JSON for ``.json``, YAML otherwise); ``None`` gives open mode."""
    if path is None or str(path) == "":
        return Tenants.open()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TenantsConfigError(f"cannot read tenants file {str(p)!r}: {e.strerror}") from e
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:  # its message holds a position, never file content
        raise TenantsConfigError(f"tenants file {str(p)!r} is not valid JSON: {e}") from e
    except yaml.YAMLError as e:
        raise TenantsConfigError(
            f"tenants file {str(p)!r} is not valid YAML: {_yaml_where(e)}"
        ) from e
    return parse_tenants(data, source=str(p))


def _yaml_where(e: yaml.YAMLError) -> str:
    # str(e) quotes the offending line, which may hold an API key: keep only problem + position.
    problem = getattr(e, "problem", None) or "syntax error"
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem
