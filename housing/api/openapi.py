"""The OpenAPI document, with the HousingFeatures component that /predict's hand-written request body refers
to."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from housing.api.schemas import HousingFeatures


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, built on first use: FastAPI's, plus the HousingFeatures component
    schema."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        schema.setdefault("components", {}).setdefault("schemas", {})["HousingFeatures"] = (
            HousingFeatures.model_json_schema()
        )
        app.openapi_schema = schema
    return app.openapi_schema


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi`` (served at /openapi.json and /docs) return :func:`openapi_schema`."""
    app.openapi = functools.partial(openapi_schema, app)  # type: ignore[method-assign]
