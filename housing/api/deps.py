"""Typed dependencies of the routes, read from ``app.state`` (tests may override them)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from housing.api.rate_limits import retry_after
from housing.api.services import Services
from housing.config.settings import Settings


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
:func:`require_labeller`."""


def require_labeller(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(feedback_bearer)],
) -> str:
    """The labeller whose token the request carries (``Authorization: Bearer <token>``): 401 without bearer
    credentials, 403 with an unknown token, 429 past the labeller's rate; when HOUSING_UNSAFE_OPEN_FEEDBACK
    is set, anyone's, as the default labeller (the lifespan warns)."""
    settings = services.settings
    if settings.unsafe_open_feedback:
        return settings.default_labeller
    if credentials is None:
        raise HTTPException(
            401,
            "missing feedback token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not services.labellers.loaded:
        raise HTTPException(503, "the feedback tokens are not loaded yet; try again in a moment")
    labeller = services.labellers.labeller(credentials.credentials)
    if labeller is None:
        raise HTTPException(403, "wrong feedback token")
    wait = services.label_limits.take(labeller, 1)
    if wait:
        raise HTTPException(
            429,
            f"labeller {labeller!r} sent labels faster than {settings.feedback_labels_per_second:g} per"
            " second (HOUSING_FEEDBACK_LABELS_PER_SECOND); retry later",
            headers={"Retry-After": retry_after(wait)},
        )
    return labeller


LabellerDep = Annotated[str, Depends(require_labeller)]
"""The labeller of a POST /feedback request (its token checked, its rate counted)."""
