"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from loraplex.gateway.auth import TenantDep
from loraplex.gateway.responses_history import ResponseHistory
from loraplex.gateway.service import GatewayService
from loraplex.gateway.settings import GatewaySettings

__all__ = ["HistoryDep", "ServiceDep", "SettingsDep", "TenantDep"]


def get_service(request: Request) -> GatewayService:
    return request.app.state.service


def get_settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


def get_history(request: Request) -> ResponseHistory:
    return request.app.state.responses


HistoryDep = Annotated[ResponseHistory, Depends(get_history)]
ServiceDep = Annotated[GatewayService, Depends(get_service)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
