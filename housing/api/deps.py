"""Typed dependencies of the routes, read from ``app.state`` (tests may override them)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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


def require_admin(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <HOUSING_ADMIN_TOKEN>")] = None,
) -> None:
    """Let the request through only with ``Authorization: Bearer <HOUSING_ADMIN_TOKEN>``: 401 without a token,
    403 with a wrong one or when no admin token is set (the admin endpoints are then disabled)."""
    expected = settings.admin_token.get_secret_value() if settings.admin_token else None
    if not expected:
        raise HTTPException(403, "the admin endpoint is disabled: set HOUSING_ADMIN_TOKEN to enable it")
    if not authorization:
        raise HTTPException(
            401,
            "missing admin token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise HTTPException(403, "wrong admin token")


AdminDep = Depends(require_admin)
"""Put in a route's ``dependencies=[AdminDep]`` to guard it with the admin token."""


feedback_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="FeedbackToken",
    description=(
        "The labellers' token: HOUSING_FEEDBACK_TOKEN, else the one the API generated in"
        " <artifacts>/secrets/feedback_token."
    ),
)
"""Reads ``Authorization: Bearer <token>`` and documents the scheme in OpenAPI; the check is
:func:`require_feedback_token`."""


def require_feedback_token(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(feedback_bearer)],
) -> None:
    """Let a label through only with ``Authorization: Bearer <feedback token>``: 401 without bearer
    credentials, 403 with a wrong token; anyone's when HOUSING_UNSAFE_OPEN_FEEDBACK is set (the lifespan
    warns)."""
    if services.settings.unsafe_open_feedback:
        return
    if credentials is None:
        raise HTTPException(
            401,
            "missing feedback token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = services.feedback_token
    if expected is None:
        raise HTTPException(503, "the feedback token is not loaded yet; try again in a moment")
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(403, "wrong feedback token")


FeedbackTokenDep = Depends(require_feedback_token)
"""Put in a route's ``dependencies=[FeedbackTokenDep]`` to accept only the labellers' token."""
