"""POST /predict, the documented route: one district or a batch, with its hand-written OpenAPI request body.

With the fast path on (the default), :class:`housing.api.fast_path.PredictFastPath` answers POST /predict
first, below the router, so this route never runs; it documents the endpoint in OpenAPI and answers when
the app is built with ``create_app(fast_path=False)``. Both call the same
:func:`housing.api.predict_handler.handle_predict`, so they answer alike.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from housing.api.deps import ServicesDep
from housing.api.predict_handler import handle_predict
from housing.api.schemas import BatchPrediction, ProblemDetail, SinglePrediction
from housing.schema import EXAMPLE_REQUEST, FEATURES

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ProblemDetail, "description": "Malformed JSON."},
    413: {"model": ProblemDetail, "description": "More rows than the batch limit."},
    422: {
        "model": ProblemDetail,
        "description": "A field is missing, unknown, not a finite number, or out of range.",
    },
    503: {"model": ProblemDetail, "description": "No production model is loaded yet."},
}


def request_body(max_batch_rows: int) -> dict[str, Any]:
    """The OpenAPI requestBody: one HousingFeatures object or a list of 1 to ``max_batch_rows``, with
    examples."""
    feature_ref = {"$ref": "#/components/schemas/HousingFeatures"}
    return {
        "parameters": [
            {
                "name": "X-Routing-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 256},
                "description": (
                    "Keeps a client on the same model while a canary runs (a stable hash of it picks the"
                    " model)."
                ),
            },
            *(
                {
                    "name": spec.name,
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "example": spec.example},
                    "description": (
                        f"{spec.description} ({spec.unit}; {spec.rule()}). Only with an empty body: all 8 or"
                        " none."
                    ),
                }
                for spec in FEATURES
            ),
        ],
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            feature_ref,
                            {
                                "type": "array",
                                "items": feature_ref,
                                "minItems": 1,
                                "maxItems": max_batch_rows,
                            },
                        ]
                    },
                    "examples": {
                        "single district": {"value": EXAMPLE_REQUEST},
                        "batch": {
                            "value": [
                                EXAMPLE_REQUEST,
                                {**EXAMPLE_REQUEST, "MedInc": 8.3, "Latitude": 37.88, "Longitude": -122.23},
                            ]
                        },
                    },
                }
            },
        },
    }


async def predict(request: Request, services: ServicesDep) -> Response:
    """Send one JSON object with the 8 features, or a list of up to `max_batch_rows` of them; or, as the
    original report did, the 8 features as query parameters with an empty body
    (`POST /predict?MedInc=3.5&HouseAge=28&...&Longitude=-118.3`, same validation; a query string and a body
    together are a 400).

    While a challenger (the `staging` alias) is loaded and `HOUSING_CANARY_PERCENT` is above 0, that share of
    requests is answered by the challenger (`model_version` says which answered); the optional `X-Routing-Key`
    header keeps a client on the same model (a stable hash of it picks the model; without it, of the request
    id).
    """
    status, content, headers = await handle_predict(
        services,
        await request.body(),
        request.scope.get("query_string", b""),
        request.scope["headers"],
        request.scope.get("client"),
    )
    return Response(
        content,
        status_code=status,
        media_type="application/json",
        headers={k.decode(): v.decode() for k, v in headers},
    )


def create_router(max_batch_rows: int) -> APIRouter:
    """The /predict router; its documented batch limit is a setting, so it is built per app."""
    router = APIRouter()
    router.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        response_model=SinglePrediction | BatchPrediction,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body(max_batch_rows),
        summary="Predict the median house value of one district or a batch",
    )
    return router
