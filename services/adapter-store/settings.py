"""The adapter-store's one settings object: its listener, and the registration it serves
(``RegistrationConfig``, flags over ``LORAPLEX_*`` environment defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.adapters.registration.config import RegistrationConfig


@dataclass(frozen=True)
class Settings:
    registration: RegistrationConfig
    host: str = "127.0.0.1"
    port: int = 8100

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"invalid port {self.port}")

    @classmethod
    def from_env(
        cls, host: str | None = None, port: int | None = None, **registration: object
    ) -> Settings:
        """Defaults from the environment registry; flags (not None) win."""
        return cls(
            RegistrationConfig.from_env(**registration),
            host=host or "127.0.0.1",
            port=8100 if port is None else port,
        )
