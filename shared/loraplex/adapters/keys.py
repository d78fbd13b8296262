"""The Redis key layout of the adapter registry (one place; nothing else builds key names).

``{p}`` is the deployment prefix (default ``loraplex``); adapter names never contain ``:``.

========================================  ======  ==================================================
key                                       type    holds
========================================  ======  ==================================================
``{p}:adapters``                          SET     names of all committed adapters (the index)
``{p}:adapters:version``                  STRING  INCR counter: deployment-wide version ids
``{p}:adapter:{name}``                    HASH    metadata of the live version (see AdapterInfo);
                                                  its ``version`` field is the pointer to the blob
``{p}:adapter:{name}:v{version}``         HASH    the blob of one version: field ``config`` =
                                                  adapter_config.json, fields ``0..chunks-1`` =
                                                  adapter_model.safetensors in ``chunk_size`` pieces
========================================  ======  ==================================================

A blob is staged with a TTL, made permanent (PERSIST) in the same MULTI/EXEC that writes the
metadata, so an upload that dies midway is invisible and expires on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "loraplex"


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
    def version_counter(self) -> str:
        return f"{self.prefix}:adapters:version"

    def meta(self, name: str) -> str:
        return f"{self.prefix}:adapter:{name}"

    def blob(self, name: str, version: int) -> str:
        return f"{self.prefix}:adapter:{name}:v{version}"

    def all_pattern(self) -> str:
        """SCAN pattern matching every key this layout can create."""
        return f"{self.prefix}:adapter*"
