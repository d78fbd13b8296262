"""Request dependencies as ``Annotated`` aliases: the app state and the calling tenant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, Request

from loraplex.adapters.registration.config import RegistrationConfig
from loraplex.adapters.registration.events import EventPublisher
from loraplex.adapters.registration.registrar import Registrar
from loraplex.adapters.store import AdapterStore
from loraplex.tenants import Tenant
from loraplex.tenants_watch import LiveTenants


@dataclass(frozen=True)
class AppState:
    config: RegistrationConfig
    tenants: LiveTenants
    store: AdapterStore
    events: EventPublisher
    registrar: Registrar
    adapters_root: Path | None  # realpath of --adapters-root


def get_state(request: Request) -> AppState:
    return request.app.state.loraplex


State = Annotated[AppState, Depends(get_state)]


def current_tenant(state: State, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    """The tenant owning the bearer key (AuthenticationError -> 401); open mode: ``default``."""
    return state.tenants.authenticate(authorization)


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
