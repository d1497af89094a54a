"""Typed dependencies of the routes, read from ``app.state`` (tests may override them)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from housing.api.services import Services
from housing.config import Settings


def get_services(request: Request) -> Services:
    """The app's :class:`Services`, created by ``create_app``."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_app_settings(services: ServicesDep) -> Settings:
    """The settings the app was built with."""
    return services.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def require_admin(settings: SettingsDep, authorization: Annotated[str | None, Header(description="Bearer <HOUSING_ADMIN_TOKEN>")] = None) -> None:
    """Let the request through only with ``Authorization: Bearer <HOUSING_ADMIN_TOKEN>``: 401 without a token,
    403 with a wrong one or when no admin token is set (the admin endpoints are then disabled)."""
    expected = settings.admin_token.get_secret_value() if settings.admin_token else None
    if not expected:
        raise HTTPException(403, "the admin endpoint is disabled: set HOUSING_ADMIN_TOKEN to enable it")
    if not authorization:
        raise HTTPException(401, "missing admin token: send 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise HTTPException(403, "wrong admin token")


AdminDep = Depends(require_admin)
"""Put in a route's ``dependencies=[AdminDep]`` to guard it with the admin token."""
