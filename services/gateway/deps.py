"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from loraplex.gateway.auth import TenantDep
from loraplex.gateway.service import GatewayService
from loraplex.gateway.settings import GatewaySettings

__all__ = ["ServiceDep", "SettingsDep", "TenantDep"]


def get_service(request: Request) -> GatewayService:
    return request.app.state.service


def get_settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


ServiceDep = Annotated[GatewayService, Depends(get_service)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
