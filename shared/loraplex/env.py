"""The one registry of ``LORAPLEX_*`` environment variables.

Every variable the code reads is declared here with its type, default and meaning; nothing else in
the package calls ``os.environ`` for configuration.  ``loraplex env`` prints the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class EnvVar(Generic[T]):
    name: str
    default: T
    help: str

    def get(self) -> T:
        raw = os.environ.get(self.name)
        if raw is None or raw == "":
            return self.default
        kind = type(self.default)
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")  # type: ignore[return-value]
        return kind(raw)  # type: ignore[call-arg]


DISABLE_TRITON = EnvVar("LORAPLEX_DISABLE_TRITON", False, "use the torch twins even on CUDA")
TRITON_ON_CPU = EnvVar(
    "LORAPLEX_TRITON_ON_CPU", False, "run Triton kernels on CPU (needs TRITON_INTERPRET=1; tests)"
)
LOG_LEVEL = EnvVar("LORAPLEX_LOG_LEVEL", "INFO", "logging level of every service")
BLOCK_SIZE = EnvVar("LORAPLEX_BLOCK_SIZE", 16, "tokens per KV-cache block")
KV_CACHE_MEMORY = EnvVar(
    "LORAPLEX_KV_CACHE_MEMORY_MB", 0, "KV-cache size in MiB (0: derive from --num-kv-blocks)"
)

REGISTRY: tuple[EnvVar, ...] = (DISABLE_TRITON, TRITON_ON_CPU, LOG_LEVEL, BLOCK_SIZE, KV_CACHE_MEMORY)


def describe() -> str:
    """A table of every variable, its default and current value (for ``loraplex env``)."""
    rows = [f"{v.name:<32} default={v.default!r:<8} now={v.get()!r:<8} {v.help}" for v in REGISTRY]
    return "\n".join(rows)
