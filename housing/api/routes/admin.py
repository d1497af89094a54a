"""POST /admin/reload: check the production alias now, guarded by the admin bearer token.

The endpoint's docstring is its description in OpenAPI (/docs).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from housing.api.deps import AdminDep, ServicesDep
from housing.api.responses import json_response

router = APIRouter()


@router.post(
    "/admin/reload",
    dependencies=[AdminDep],
    summary="Check the production alias now and reload if it moved",
    responses={401: {"description": "No token."}, 403: {"description": "Wrong token, or admin disabled."}},
)
async def reload_model(services: ServicesDep) -> Response:
    """Needs `Authorization: Bearer <HOUSING_ADMIN_TOKEN>`. Says whether the served version changed, and the
    registry error if any."""
    before = services.model_service.current
    changed = await asyncio.to_thread(services.refresh_model)
    after = services.model_service.current
    return json_response(
        {
            "changed": changed,
            "previous_version": before.version if before else None,
            "version": after.version if after else None,
            "registry_error": services.model_service.status.last_error,
        }
    )
