"""Adapter ids and the Redis key layout of the adapter registry (one place; nothing else builds
key names or ids).

**Names are scoped to their owner.**  Tenants only ever send and see an adapter's bare *name*;
inside, an adapter is identified by its *id* ``<owner>/<name>``.  Tenant names and adapter names
both match ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}`` (no ``/``, ``:`` or ``@``), so the id is
unambiguous, and so are the engine key ``<id>@<version>`` and the Redis keys below.  The id is
what the scheduler, the workers (heartbeats, engine keys, prefix-cache namespaces) and
``SubmitRequest.adapter`` / ``PrefetchAdapter.adapter`` carry; ``AdapterEvent`` carries
``owner`` and ``name`` (``adapter_id`` joins them).

**Resolution** of a name for a tenant: its own adapter of that name, else the public adapter of
that name, else not found.  Public names are unique among public adapters (the ``public`` hash),
so a clash there reveals only public information; another tenant's private adapters never change
any answer.

``{p}`` is the deployment prefix (default ``loraplex``).

============================================  ======  ==============================================
key                                           type    holds
============================================  ======  ==============================================
``{p}:adapters``                              SET     ids of all committed adapters (the index)
``{p}:adapters:public``                       HASH    name -> id of the public adapter of that name
``{p}:adapters:version:{owner}``              STRING  INCR counter: the owner's version ids (one
                                                      per owner, so versions say nothing about
                                                      other tenants' activity)
``{p}:adapters:owned:{owner}``                SET     ids of the owner's committed adapters (its
                                                      quota, ``adapters.quota``; written by every
                                                      commit and delete, built from the index on
                                                      an owner's first commit after an upgrade)
``{p}:adapter:{owner}/{name}``                HASH    metadata of the live version (AdapterInfo);
                                                      its ``version`` field points at the blob
``{p}:adapter:{owner}/{name}:v{version}``     HASH    the blob of one version: field ``config`` =
                                                      adapter_config.json, fields ``0..chunks-1``
                                                      = adapter_model.safetensors in ``chunk_size``
                                                      pieces
============================================  ======  ==============================================

A blob is staged with a TTL, made permanent (PERSIST) in the same MULTI/EXEC that writes the
metadata, so an upload that dies midway is invisible and expires on its own.

Before owner scoping the keys were ``{p}:adapter:{name}`` (and ``:v{version}``) with bare names in
the index and one deployment-wide counter ``{p}:adapters:version``; ``adapters.migrate`` moves
them to this layout when the adapter store starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loraplex.lora.names import NAME_PATTERN
from loraplex.tenants import TENANT_NAME_PATTERN

DEFAULT_PREFIX = "loraplex"
ID_SEPARATOR = "/"
ID_PATTERN = re.compile(
    TENANT_NAME_PATTERN.pattern.rstrip("$") + ID_SEPARATOR + NAME_PATTERN.pattern.lstrip("^")
)


def adapter_id(owner: str, name: str) -> str:
    """The internal id of ``owner``'s adapter ``name``."""
    return f"{owner}{ID_SEPARATOR}{name}"


def split_adapter_id(aid: str) -> tuple[str, str]:
    """(owner, name) of an id; ValueError if it is not one."""
    if not ID_PATTERN.match(aid or ""):
        raise ValueError(f"not an adapter id: {aid!r}")
    owner, _, name = aid.partition(ID_SEPARATOR)
    return owner, name


@dataclass(frozen=True)
class StoreKeys:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or any(c.isspace() or c in "*?[]" for c in self.prefix):
            raise ValueError(f"invalid Redis key prefix {self.prefix!r}")

    @property
    def index(self) -> str:
        return f"{self.prefix}:adapters"

    @property
    def public(self) -> str:
        return f"{self.prefix}:adapters:public"

    def version_counter(self, owner: str) -> str:
        return f"{self.prefix}:adapters:version:{owner}"

    def owned(self, owner: str) -> str:
        return f"{self.prefix}:adapters:owned:{owner}"

    @property
    def legacy_version_counter(self) -> str:
        """The deployment-wide counter of the layout before owner scoping (``adapters.migrate``)."""
        return f"{self.prefix}:adapters:version"

    def meta(self, aid: str) -> str:
        return f"{self.prefix}:adapter:{aid}"

    def blob(self, aid: str, version: int) -> str:
        return f"{self.prefix}:adapter:{aid}:v{version}"

    def all_pattern(self) -> str:
        """SCAN pattern matching every key this layout can create."""
        return f"{self.prefix}:adapter*"
