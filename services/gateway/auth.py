"""API key -> tenant.  Open mode (no tenants file): every caller is the tenant ``default``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from loraplex.tenants import Tenant, Tenants


def get_tenants(request: Request) -> Tenants:
    return request.app.state.tenants


def current_tenant(request: Request) -> Tenant:
    """The caller's tenant from ``Authorization: Bearer <key>``; AuthenticationError (401) if bad."""
    return get_tenants(request).authenticate(request.headers.get("authorization"))


TenantDep = Annotated[Tenant, Depends(current_tenant)]
