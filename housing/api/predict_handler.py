"""POST /predict on a raw body, shared by the fast path (housing.api.fast_path) and the documented route.

Parse the JSON, validate one row or a batch against the feature contract, predict (single rows through
the micro-batcher; batches inline, or in a worker thread when large), log every prediction, render the
body. :func:`handle_predict` returns ``(status, body, extra headers)`` and never raises for bad input:
every client error is rendered by :func:`housing.api.problems.problem_body`.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from housing.api.problems import InputError, describe_errors, problem_body, retry_after, validation_problem
from housing.api.schemas import many_rows_adapter, one_row_adapter
from housing.api.services import Services
from housing.prediction_log import prediction_rows
from housing.schema import FEATURE_NAMES, TARGET_UNIT_DOLLARS
from housing.serving import LoadedModel, ModelUnavailable

INLINE_BATCH_ROWS = 64
"""Batches up to this size are predicted on the event loop; larger ones in a worker thread."""

Headers = list[tuple[bytes, bytes]]
"""Extra raw ASGI headers of a response."""

_feature_values = operator.attrgetter(*FEATURE_NAMES)


def parse_json(body: bytes) -> Any:
    """Parse a request body; NaN/Infinity literals parse too, so the validator can name their field."""
    if not body.strip():
        raise InputError(400, "the request body is empty; send a JSON object with the 8 features, or a list of them")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(400, f"the request body is not valid JSON ({error})") from None


def features_of(rows: Sequence[BaseModel]) -> np.ndarray:
    """The validated rows as an (n, 8) float64 array in contract order."""
    return np.array([_feature_values(row) for row in rows], dtype=np.float64)


def new_request_ids(count: int) -> list[str]:
    """Unique 32-hex-digit ids: one random uuid4 for a single row; for a batch, a random 104-bit prefix
    and the row's position (a uuid per row would cost ~20 ms for 10,000 rows)."""
    if count == 1:
        return [uuid.uuid4().hex]
    prefix = os.urandom(13).hex()
    return [f"{prefix}{index:06x}" for index in range(count)]


def log_predictions(services: Services, request_ids: list[str], features: np.ndarray, values: list[float], model: LoadedModel,
                    started: float) -> None:
    """Buffer the predictions for the prediction log and count them in the Prometheus metrics."""
    latency_ms = (time.perf_counter() - started) * 1000
    services.prediction_log.append(
        prediction_rows(request_ids, features, values, model_name=model.name, model_version=model.version,
                        latency_ms=latency_ms, created_at=services.prediction_log.timestamp(datetime.now(UTC)))
    )
    services.metrics.predictions.labels(model.version).inc(len(request_ids))
    services.metrics.observe_predictions(values)


async def handle_predict(services: Services, body: bytes) -> tuple[int, bytes, Headers]:
    """POST /predict on the raw body: (status, JSON body, extra headers). Never raises for bad input."""
    started = time.perf_counter()
    try:
        payload = parse_json(body)
        if isinstance(payload, dict):
            content = await predict_one(services, payload, started)
        else:
            content = await predict_batch(services, payload, started)
    except InputError as error:
        return error.status, problem_body(error.detail, error.errors), []
    except ModelUnavailable as error:
        return 503, problem_body(str(error)), [(b"retry-after", retry_after(services.settings).encode())]
    return 200, content, []


async def predict_one(services: Services, payload: dict[str, Any], started: float) -> bytes:
    """Validate, predict (micro-batched) and log one row; the response body."""
    try:
        row = one_row_adapter.validate_python(payload)
    except ValidationError as error:
        raise validation_problem(describe_errors(error.errors(), batch=False)) from None
    features = features_of([row])
    value, model = await services.batcher.predict_one(features[0])
    request_ids = new_request_ids(1)
    log_predictions(services, request_ids, features, [value], model, started)
    return orjson.dumps({
        "request_id": request_ids[0], "MedHouseVal": value, "price_usd": round(value * TARGET_UNIT_DOLLARS, 2),
        "model_name": model.name, "model_version": model.version,
    })


async def predict_batch(services: Services, payload: Any, started: float) -> bytes:
    """Check the batch's shape and size, validate, predict and log every row; the response body."""
    limit = services.settings.max_batch_rows
    if not isinstance(payload, list):
        raise InputError(422, "the body must be a JSON object with the 8 features, or a list of such objects")
    if not payload:
        raise InputError(422, "the batch is empty; send at least one row")
    if len(payload) > limit:
        raise InputError(413, f"the batch has {len(payload):,} rows; the limit is {limit:,} (HOUSING_MAX_BATCH_ROWS)")
    try:
        rows = many_rows_adapter.validate_python(payload)
    except ValidationError as error:
        raise validation_problem(describe_errors(error.errors(), batch=True)) from None
    features = features_of(rows)
    model = services.model_service.require()
    predicted = model.predict(features) if len(rows) <= INLINE_BATCH_ROWS else await asyncio.to_thread(model.predict, features)
    values = predicted.tolist()
    request_ids = new_request_ids(len(rows))
    log_predictions(services, request_ids, features, values, model, started)
    return orjson.dumps({
        "model_name": model.name,
        "model_version": model.version,
        "predictions": [
            {"request_id": rid, "MedHouseVal": v, "price_usd": round(v * TARGET_UNIT_DOLLARS, 2)}
            for rid, v in zip(request_ids, values, strict=True)
        ],
    })
