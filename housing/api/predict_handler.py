"""POST /predict on a raw body, shared by the fast path (housing.api.fast_path) and the documented route.

Check the body against the JSON limits (housing.api.json_scan), parse it, validate one row or a batch
against the feature contract, predict (single rows through the micro-batcher; batches inline, or in a
worker thread when large), log every prediction, render the body. A body over :data:`OFFLOAD_BODY_BYTES`
is checked, parsed and validated in a worker thread, in steps that each hold the GIL briefly, so that the
event loop keeps answering other requests; a small one (a single row is ~150 bytes) on the event loop.
A validation error list holds at most ``max_listed_errors`` entries; the detail counts the rest.
:func:`handle_predict` returns ``(status, body, extra headers)`` and never raises for bad input: every
client error is rendered by :func:`housing.api.problems.problem_body`.
"""

from __future__ import annotations

import asyncio
import operator
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from housing.api.json_scan import DEFAULT_JSON_LIMITS, JsonLimits, check_json_limits
from housing.api.prediction_logging import log_predictions
from housing.api.problems import (
    InputError,
    describe_errors,
    model_unavailable,
    problem_body,
    unavailable,
    validation_problem,
)
from housing.api.query_params import query_payload
from housing.api.rate_limits import retry_after
from housing.api.row_decoding import decode_rows
from housing.api.schemas import many_rows_adapter, one_row_adapter
from housing.api.services import Services
from housing.config.settings import Settings
from housing.schema import FEATURE_NAMES, TARGET_UNIT_DOLLARS
from housing.serving.micro_batch import Bounds
from housing.serving.model_service import LoadedModel, ModelUnavailable
from housing.store.prediction_log import LogUnavailable

INLINE_BATCH_ROWS = 64
"""Batches up to this size are predicted on the event loop; larger ones in a worker thread."""
OFFLOAD_BODY_BYTES = 65_536
"""Bodies larger than this are checked, parsed and validated in a worker thread; smaller ones on the event
loop."""
VALIDATION_CHUNK_ROWS = 500
"""A batch is validated this many rows at a time (~2 ms each), so a worker thread holds the GIL briefly."""

Headers = list[tuple[bytes, bytes]]
"""Extra raw ASGI headers of a response."""

_feature_values = operator.attrgetter(*FEATURE_NAMES)


def parse_json(body: bytes, limits: JsonLimits = DEFAULT_JSON_LIMITS, max_rows: int | None = None) -> Any:
    """Parse a request body once it is within ``limits`` (and, when it is an array, ``max_rows`` long at
    most); NaN/Infinity literals parse too, so the validator can name their field."""
    if not body.strip():
        raise InputError(
            400, "the request body is empty; send a JSON object with the 8 features, or a list of them"
        )
    rows = check_json_limits(body, limits)
    if rows is not None and max_rows is not None and rows > max_rows:
        raise batch_too_large(rows, max_rows)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return from_json(body, allow_inf_nan=True)
    except ValueError as error:
        raise InputError(400, f"the request body is not valid JSON ({error})") from None


def batch_too_large(rows: int, limit: int) -> InputError:
    """413 for a batch of more than ``limit`` rows."""
    return InputError(413, f"the batch has {rows:,} rows; the limit is {limit:,} (HOUSING_MAX_BATCH_ROWS)")


def parse_rows(body: bytes, settings: Settings) -> tuple[np.ndarray, bool]:
    """Check, parse and validate a /predict body: its rows as an (n, 8) array and whether it was a batch.

    A valid body is decoded and validated in one C call (:func:`housing.api.row_decoding.decode_rows`,
    whose strict schema stops at the first thing out of place, so no hostile shape makes it recurse or
    allocate beyond the body); any other is checked against the JSON limits, parsed and validated again here,
    to say what is wrong with it (InputError)."""
    if body.count(b"{") <= settings.max_batch_rows:  # more objects than rows allowed: no decoding at all
        decoded = decode_rows(body)
        if decoded is not None:
            return decoded
    payload = parse_json(body, JsonLimits.of(settings), settings.max_batch_rows)
    if isinstance(payload, dict):
        return features_of([validate_row(payload, settings.max_listed_errors)]), False
    return features_of(validate_batch(payload, settings.max_batch_rows, settings.max_listed_errors)), True


def validate_row(payload: dict[str, Any], max_listed: int) -> BaseModel:
    """One row against the feature contract; 422 naming the field and the rule of each error otherwise."""
    try:
        return one_row_adapter.validate_python(payload)
    except ValidationError as error:
        raise validation_problem(
            describe_errors(error.errors()[:max_listed], batch=False), error.error_count()
        ) from None


def validate_batch(payload: Any, max_rows: int, max_listed: int) -> list[BaseModel]:
    """Check the batch's shape and size, then validate it a chunk of rows at a time; 422 listing the first
    ``max_listed`` errors (row, field, rule) and counting all of them."""
    if not isinstance(payload, list):
        raise InputError(422, "the body must be a JSON object with the 8 features, or a list of such objects")
    if not payload:
        raise InputError(422, "the batch is empty; send at least one row")
    if len(payload) > max_rows:
        raise batch_too_large(len(payload), max_rows)
    rows: list[BaseModel] = []
    described: list[dict[str, Any]] = []
    errors = 0
    for start in range(0, len(payload), VALIDATION_CHUNK_ROWS):
        chunk = payload[start : start + VALIDATION_CHUNK_ROWS]
        try:
            rows += many_rows_adapter.validate_python(chunk)
        except ValidationError as error:
            errors += error.error_count()
            if len(described) < max_listed:
                described += describe_rows(chunk, start, max_listed - len(described))
    if errors:
        raise validation_problem(described, errors)
    return rows


def describe_rows(chunk: list[Any], first_row: int, wanted: int) -> list[dict[str, Any]]:
    """Describe the errors of the rows of ``chunk`` (numbered from ``first_row``), row by row, until
    ``wanted`` are described: the entries of the rows after that are never built."""
    described: list[dict[str, Any]] = []
    for row, payload in enumerate(chunk, start=first_row):
        try:
            one_row_adapter.validate_python(payload)
        except ValidationError as error:
            errors = [
                {**entry, "loc": (row, *entry["loc"])} for entry in error.errors()[: wanted - len(described)]
            ]
            described += describe_errors(errors, batch=True)
            if len(described) >= wanted:
                break
    return described


def features_of(rows: Sequence[BaseModel]) -> np.ndarray:
    """The validated rows as an (n, 8) float64 array in contract order."""
    return np.array([_feature_values(row) for row in rows], dtype=np.float64)


def new_request_ids(count: int) -> list[str]:
    """Unique 32-hex-digit ids ordered by time, as UUIDv7 is: 12 digits of milliseconds since the epoch, then
    80 random bits for a single row, or 56 random bits and the row's position for a batch (an id per row
    would cost ~20 ms for 10,000 rows). Ordered ids land at the end of the log's primary-key index, where an
    insert touches the same few pages, instead of at random places in it."""
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    if count == 1:
        return [stamp + os.urandom(10).hex()]
    prefix = stamp + os.urandom(7).hex()
    return [f"{prefix}{index:06x}" for index in range(count)]


MAX_ROUTING_KEY_CHARS = 256
"""Longest X-Routing-Key a client may send (the OpenAPI schema says so too)."""


def routing_key(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The X-Routing-Key header's value (ASGI header names are lower case), if the client sent one."""
    return next((value for name, value in headers if name == b"x-routing-key"), None)


async def handle_predict(
    services: Services,
    body: bytes,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    peer: Any = None,
) -> tuple[int, bytes, Headers]:
    """POST /predict on the raw request: (status, JSON body, extra headers). Never raises for bad input.

    ``headers``: the raw ASGI headers (the client's token, its X-Routing-Key, which keeps its canary routing
    stable); ``peer``: the ASGI ``client`` (its address names the client when no tokens are required).
    ``query``: the raw query string; when there is one, it carries the 8 features and the body must be empty
    (the original report's form).
    """
    started = time.perf_counter()
    denied, client = services.clients.client(list(headers), peer)
    if denied:
        return denied, problem_body(client), [(b"www-authenticate", b"Bearer")] if denied == 401 else []
    key = routing_key(headers) if services.settings.canary_percent else None
    try:
        if key is not None and len(key) > MAX_ROUTING_KEY_CHARS:
            raise InputError(
                422, f"X-Routing-Key has {len(key):,} characters; at most {MAX_ROUTING_KEY_CHARS}"
            )
        refusal = services.prediction_log.disk_refusal()
        if refusal is not None:
            raise LogUnavailable(refusal)
        if query:
            row = validate_row(
                query_payload(query, body, services.settings.max_number_chars),
                services.settings.max_listed_errors,
            )
            features, batch = features_of([row]), False
        elif len(body) > OFFLOAD_BODY_BYTES:
            features, batch = await asyncio.to_thread(parse_rows, body, services.settings)
        else:
            features, batch = parse_rows(body, services.settings)
        wait = services.row_limits.take(client, len(features))
        if wait:
            return too_many_rows(services.settings, client, wait)
        if batch:
            content = await predict_batch(services, features, started, key, client)
        else:
            content = await predict_one(services, features[0], started, key, client)
    except InputError as error:
        return error.status, problem_body(error.detail, error.errors), []
    except ModelUnavailable as error:
        return model_unavailable(error, services.settings)
    except LogUnavailable as error:  # no prediction is served that could not be logged
        return unavailable(str(error), str(error.retry_after))
    return 200, content, []


def too_many_rows(settings: Settings, client: str, wait: float) -> tuple[int, bytes, Headers]:
    """429 for a client past its rows per second."""
    return (
        429,
        problem_body(
            f"client {client!r} asked for more than {settings.predict_rows_per_second:,g} rows per second"
            " (HOUSING_PREDICT_ROWS_PER_SECOND); retry later"
        ),
        [(b"retry-after", retry_after(wait).encode())],
    )


async def predict_one(
    services: Services, row: np.ndarray, started: float, routing_key: bytes | None, client: str
) -> bytes:
    """Predict (micro-batched, by the model the routing picks) and log one validated row (8 features); the
    response body. The batcher logs and counts the row with its batch (:func:`log_batch`)."""
    request_id = new_request_ids(1)[0]
    batcher = services.route(routing_key, request_id)
    try:
        answer = await batcher.predict_one(row, request_id, started, client)
    except ModelUnavailable:
        if batcher is services.batcher:
            raise
        answer = await services.batcher.predict_one(  # the challenger was unloaded meanwhile
            row, request_id, started, client
        )
    model = answer.model
    return orjson.dumps(
        {
            "request_id": request_id,
            "MedHouseVal": answer.value,
            "price_usd": round(answer.value * TARGET_UNIT_DOLLARS, 2),
            **interval_fields(model, answer.low, answer.high),
            "model_name": model.name,
            "model_version": model.version,
        }
    )


def interval_fields(model: LoadedModel, low: float | None, high: float | None) -> dict[str, Any]:
    """A prediction's ``interval`` (level, low, high, in the target's unit and in dollars), or, for a
    version without one, ``interval: null`` and the ``interval_note`` that says why."""
    if low is None or high is None or model.interval is None:
        return {"interval": None, "interval_note": model.interval_note}
    return {
        "interval": {
            "level": model.interval.level,
            "low": low,
            "high": high,
            "low_usd": round(low * TARGET_UNIT_DOLLARS, 2),
            "high_usd": round(high * TARGET_UNIT_DOLLARS, 2),
        }
    }


def predict_with_bounds(model: LoadedModel, features: np.ndarray) -> tuple[list[float], Bounds]:
    """A batch's predictions and their ranges (None: the version has no interval)."""
    predicted = model.predict(features)
    if model.interval is None:
        return predicted.tolist(), None
    low, high = model.interval.bounds(features, predicted)
    return predicted.tolist(), (low.tolist(), high.tolist())


async def predict_batch(
    services: Services, features: np.ndarray, started: float, routing_key: bytes | None, client: str
) -> bytes:
    """Predict and log every validated row of a batch (an (n, 8) array; in a worker thread when large), the
    whole batch by the model the routing picks (keyed by X-Routing-Key, else the first request id); the
    response body."""
    request_ids = new_request_ids(len(features))
    canary = services.route(routing_key, request_ids[0]) is services.canary_batcher
    model = (canary and services.challenger()) or services.model_service.require()
    values, bounds = (
        predict_with_bounds(model, features)
        if len(features) <= INLINE_BATCH_ROWS
        else await asyncio.to_thread(predict_with_bounds, model, features)
    )
    log_predictions(services, request_ids, features, values, model, started, client, bounds)
    lows: list[float | None] = [None] * len(values) if bounds is None else list(bounds[0])
    highs: list[float | None] = [None] * len(values) if bounds is None else list(bounds[1])
    return orjson.dumps(
        {
            "model_name": model.name,
            "model_version": model.version,
            "predictions": [
                {
                    "request_id": rid,
                    "MedHouseVal": v,
                    "price_usd": round(v * TARGET_UNIT_DOLLARS, 2),
                    **interval_fields(model, low, high),
                }
                for rid, v, low, high in zip(request_ids, values, lows, highs, strict=True)
            ],
        }
    )
