"""The prediction service: FastAPI routes over the model service, the micro-batcher and the prediction log.

``create_app`` builds the app and does no work; the lifespan starts the prediction log writer and the
task that follows the registry's production alias, and on shutdown flushes every buffered log row.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import operator
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from sqlalchemy.exc import SQLAlchemyError

from housing.config import Settings, get_settings
from housing.errors import first_line
from housing.prediction_log import FeedbackResult, PredictionLog, prediction_rows
from housing.prometheus import Metrics, MetricsMiddleware
from housing.schema import (
    EXAMPLE_REQUEST,
    FEATURE_NAMES,
    FEATURES,
    SPECS_BY_NAME,
    TARGET,
    TARGET_UNIT_DOLLARS,
)
from housing.serving import LoadedModel, MicroBatcher, ModelService, ModelUnavailable

logger = logging.getLogger(__name__)

INLINE_BATCH_ROWS = 64
"""Batches up to this size are predicted on the event loop; larger ones in a worker thread."""


# --- request and response schemas, built from the feature contract ----------------------------------
def _feature_field(spec: Any) -> tuple[type[float], Any]:
    bound = {"gt" if spec.exclusive_minimum else "ge": spec.minimum, "le": spec.maximum}
    return float, Field(description=f"{spec.description}, in {spec.unit}. Valid: {spec.rule()}.", examples=[spec.example], **bound)


HousingFeatures: type[BaseModel] = create_model(
    "HousingFeatures",
    __config__=ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": [EXAMPLE_REQUEST]},
    ),
    __doc__="The 8 features of one district. Numbers only (no strings), finite, within the ranges shown; "
    "unknown fields are refused so that a misspelt field never silently goes missing.",
    **{spec.name: _feature_field(spec) for spec in FEATURES},
)
_one_row = TypeAdapter(HousingFeatures)
_many_rows = TypeAdapter(list[HousingFeatures])


class Prediction(BaseModel):
    request_id: str = Field(description="Id of this prediction in the log; send it back to /feedback with the true value.")
    MedHouseVal: float = Field(description=f"Predicted median house value, in {TARGET.unit}.")
    price_usd: float = Field(description="The same prediction in US dollars (1990 values).")


class SinglePrediction(Prediction):
    model_name: str
    model_version: str


class BatchPrediction(BaseModel):
    model_name: str
    model_version: str
    predictions: list[Prediction] = Field(description="One prediction per input row, in the same order.")


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False,
                              json_schema_extra={"examples": [{"request_id": "3f2c9a1e0b7d4c5e8f6a2b1c0d9e8f7a", "actual": 2.1}]})
    request_id: str = Field(min_length=1, max_length=32, description="The request_id /predict returned.")
    actual: float = Field(gt=TARGET.minimum, le=TARGET.maximum, description=f"The true {TARGET.name}, in {TARGET.unit}.")


class FeedbackAccepted(BaseModel):
    request_id: str
    status: str = Field(description="'recorded', or 'unchanged' when the same label was already stored.")


class ProblemDetail(BaseModel):
    detail: str = Field(description="One sentence saying what is wrong.")
    errors: list[dict[str, Any]] | None = Field(None, description="Every validation error: row, field, rule, message.")


# --- helpers -----------------------------------------------------------------------------------------
class InputError(Exception):
    """A client error with an HTTP status and one sentence."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors


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


def describe_errors(
    errors: list[dict[str, Any]], *, batch: bool, prefix: tuple[Any, ...] = (), expected: tuple[str, ...] = FEATURE_NAMES
) -> list[dict[str, Any]]:
    """Turn pydantic errors into entries naming the row, the field and the rule."""
    described = []
    for error in errors:
        loc = tuple(error["loc"])[len(prefix):]
        row = loc[0] if batch and loc and isinstance(loc[0], int) else None
        field_path = [str(part) for part in (loc[1:] if row is not None else loc)]
        field = field_path[-1] if field_path else None
        spec = SPECS_BY_NAME.get(field or "")
        message = error["msg"]
        if error["type"] == "float_type" and isinstance(error.get("input"), str):
            message = "must be a JSON number, not a string"
        elif error["type"] == "extra_forbidden":
            message = f"unknown field (expected only {', '.join(expected)})"
        elif spec is not None and error["type"] not in ("missing",):
            message = f"{message}; valid: {spec.rule()} {spec.unit}"
        where = (f"row {row}, " if row is not None else "") + (f"field {field}" if field else "the body")
        described.append({"row": row, "field": field, "type": error["type"], "message": f"{where}: {message}"})
    return described


def validation_problem(described: list[dict[str, Any]]) -> InputError:
    more = f" (and {len(described) - 1} more error(s))" if len(described) > 1 else ""
    return InputError(422, described[0]["message"] + more, described)


_feature_values = operator.attrgetter(*FEATURE_NAMES)


def features_of(rows: list[BaseModel]) -> np.ndarray:
    """The validated rows as an (n, 8) float64 array in contract order."""
    return np.array([_feature_values(row) for row in rows], dtype=np.float64)


def new_request_ids(count: int) -> list[str]:
    """Unique 32-hex-digit ids: one random uuid4 for a single row; for a batch, a random 104-bit prefix
    and the row's position (a uuid per row would cost ~20 ms for 10,000 rows)."""
    if count == 1:
        return [uuid.uuid4().hex]
    prefix = os.urandom(13).hex()
    return [f"{prefix}{index:06x}" for index in range(count)]


JSON_HEADERS = [(b"content-type", b"application/json")]


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def problem_body(detail: str, errors: list[dict[str, Any]] | None = None) -> bytes:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return orjson.dumps(body)


def problem(status: int, detail: str, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> Response:
    return Response(problem_body(detail, errors), status_code=status, media_type="application/json", headers=headers)


# --- the app -----------------------------------------------------------------------------------------
class Services:
    """Everything a request handler needs, created once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.model_service = ModelService(settings)
        self.batcher = MicroBatcher(self.model_service, on_batch=self.metrics.batch_rows.observe)
        self.prediction_log = PredictionLog(settings.prediction_log, flush_interval=settings.log_flush_interval)
        self._logged_rows = 0
        self._failed_flushes = 0

    def refresh_model(self) -> bool:
        changed = self.model_service.refresh()
        self.update_gauges()
        if changed:
            self.metrics.reloads.inc()
            # Move the long-lived objects (libraries, the model) out of the collector's reach, so that
            # garbage collection under load scans only request garbage and never pauses for ~100 ms.
            gc.collect()
            gc.freeze()
        return changed

    def update_gauges(self) -> None:
        model = self.model_service.current
        self.metrics.set_served_model(model.name if model else None, model.version if model else None, self.settings.production_alias)
        reachable = self.model_service.status.reachable
        self.metrics.registry_up.set(1 if reachable else 0)
        status = self.prediction_log.status()
        self.metrics.log_pending.set(status.pending_rows)
        self.metrics.log_rows.inc(status.written_rows - self._logged_rows)
        self._logged_rows = status.written_rows
        self.metrics.log_failed_flushes.inc(status.failed_flushes - self._failed_flushes)
        self._failed_flushes = status.failed_flushes

    def log_predictions(self, request_ids: list[str], features: np.ndarray, values: list[float], model: LoadedModel, started: float) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        self.prediction_log.append(
            prediction_rows(request_ids, features, values, model_name=model.name, model_version=model.version,
                            latency_ms=latency_ms, created_at=self.prediction_log.timestamp(datetime.now(UTC)))
        )
        self.metrics.predictions.labels(model.version).inc(len(request_ids))
        self.metrics.observe_predictions(values)

    async def handle_predict(self, body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """POST /predict on the raw body: (status, JSON body, extra headers). Never raises for bad input."""
        started = time.perf_counter()
        try:
            payload = parse_json(body)
            if isinstance(payload, dict):
                content = await self._predict_one(payload, started)
            else:
                content = await self._predict_batch(payload, started)
        except InputError as error:
            return error.status, problem_body(error.detail, error.errors), []
        except ModelUnavailable as error:
            return 503, problem_body(str(error)), [(b"retry-after", str(int(self.settings.reload_interval)).encode())]
        return 200, content, []

    async def _predict_one(self, payload: dict[str, Any], started: float) -> bytes:
        try:
            row = _one_row.validate_python(payload)
        except ValidationError as error:
            raise validation_problem(describe_errors(error.errors(), batch=False)) from None
        features = features_of([row])
        value, model = await self.batcher.predict_one(features[0])
        request_ids = new_request_ids(1)
        self.log_predictions(request_ids, features, [value], model, started)
        return orjson.dumps({
            "request_id": request_ids[0], "MedHouseVal": value, "price_usd": round(value * TARGET_UNIT_DOLLARS, 2),
            "model_name": model.name, "model_version": model.version,
        })

    async def _predict_batch(self, payload: Any, started: float) -> bytes:
        limit = self.settings.max_batch_rows
        if not isinstance(payload, list):
            raise InputError(422, "the body must be a JSON object with the 8 features, or a list of such objects")
        if not payload:
            raise InputError(422, "the batch is empty; send at least one row")
        if len(payload) > limit:
            raise InputError(413, f"the batch has {len(payload):,} rows; the limit is {limit:,} (HOUSING_MAX_BATCH_ROWS)")
        try:
            rows = _many_rows.validate_python(payload)
        except ValidationError as error:
            raise validation_problem(describe_errors(error.errors(), batch=True)) from None
        features = features_of(rows)
        model = self.model_service.require()
        if len(rows) <= INLINE_BATCH_ROWS:
            values = model.predict(features).tolist()
        else:
            values = (await asyncio.to_thread(model.predict, features)).tolist()
        request_ids = new_request_ids(len(rows))
        self.log_predictions(request_ids, features, values, model, started)
        return orjson.dumps({
            "model_name": model.name,
            "model_version": model.version,
            "predictions": [
                {"request_id": rid, "MedHouseVal": v, "price_usd": round(v * TARGET_UNIT_DOLLARS, 2)}
                for rid, v in zip(request_ids, values, strict=True)
            ],
        })


class PredictFastPath:
    """Pure ASGI middleware that answers ``POST /predict`` with :meth:`Services.handle_predict` directly.

    It is the same handler the FastAPI route calls (the route stays for the OpenAPI docs); going around
    FastAPI's router, dependency solving and Request/Response objects saves most of the per-request cost
    on the hottest path. Every other request goes to the app unchanged.
    """

    def __init__(self, app: Any, services: Services) -> None:
        self.app = app
        self.services = services
        self.max_body_bytes = services.settings.max_batch_rows * 1024 + 65_536

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _send(send, 413, problem_body(f"the request body is larger than {self.max_body_bytes:,} bytes"), [])
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        status, content, headers = await self.services.handle_predict(b"".join(chunks))
        await _send(send, status, content, headers)


async def _send(send: Any, status: int, content: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*JSON_HEADERS, (b"content-length", str(len(content)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": content})


async def follow_registry(services: Services) -> None:
    """Check the production alias now and then every ``reload_interval`` seconds; swap models when it moves."""
    while True:
        try:
            await asyncio.to_thread(services.refresh_model)
        except Exception:
            logger.exception("registry check crashed")
        await asyncio.sleep(services.settings.reload_interval)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API (no I/O here: the lifespan starts the log writer and the registry follower)."""
    settings = settings or get_settings()
    services = Services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not logging.getLogger().handlers:  # under uvicorn: our progress lines beside its own
            logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
        await asyncio.to_thread(services.prediction_log.start)
        follower = asyncio.create_task(follow_registry(services), name="follow-registry")
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await asyncio.to_thread(services.prediction_log.close)
            logger.info("prediction log flushed: %d row(s) written", services.prediction_log.written_rows)

    app = FastAPI(
        title="California housing price API",
        version="1.0",
        summary="Predicts the median house value of a California district and logs every prediction.",
        description=(
            "Serves the version of the `CaliforniaHousing` model that the MLflow registry's `production` alias "
            "names, and switches without a restart when the alias moves. Every prediction is logged with a "
            "`request_id`; send the true value to `/feedback` when it is known. Units: `MedHouseVal` is in "
            "$100,000 (1990 dollars); `price_usd` is the same value in dollars."
        ),
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(PredictFastPath, services=services)  # inner: answers POST /predict without the router
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)  # outer: counts every request

    @app.exception_handler(InputError)
    async def _input_error(_: Request, error: InputError) -> Response:
        return problem(error.status, error.detail, error.errors)

    @app.exception_handler(RequestValidationError)
    async def _request_validation_error(_: Request, error: RequestValidationError) -> Response:
        errors = list(error.errors())
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(400, "the request body is not valid JSON")
        described = describe_errors(errors, batch=False, prefix=("body",), expected=tuple(Feedback.model_fields))
        more = f" (and {len(described) - 1} more error(s))" if len(described) > 1 else ""
        return problem(422, described[0]["message"] + more, described)

    @app.exception_handler(ModelUnavailable)
    async def _model_unavailable(_: Request, error: ModelUnavailable) -> Response:
        return problem(503, str(error), headers={"Retry-After": str(int(settings.reload_interval))})

    feature_ref = {"$ref": "#/components/schemas/HousingFeatures"}
    predict_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            feature_ref,
                            {"type": "array", "items": feature_ref, "minItems": 1, "maxItems": settings.max_batch_rows},
                        ]
                    },
                    "examples": {
                        "single district": {"value": EXAMPLE_REQUEST},
                        "batch": {"value": [EXAMPLE_REQUEST, {**EXAMPLE_REQUEST, "MedInc": 8.3, "Latitude": 37.88, "Longitude": -122.23}]},
                    },
                }
            },
        }
    }
    error_responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ProblemDetail, "description": "Malformed JSON."},
        413: {"model": ProblemDetail, "description": "More rows than the batch limit."},
        422: {"model": ProblemDetail, "description": "A field is missing, unknown, not a finite number, or out of range."},
        503: {"model": ProblemDetail, "description": "No production model is loaded yet."},
    }

    @app.post(
        "/predict",
        response_model=SinglePrediction | BatchPrediction,
        responses=error_responses,
        openapi_extra=predict_body,
        summary="Predict the median house value of one district or a batch",
    )
    async def predict(request: Request) -> Response:
        """Send one JSON object with the 8 features, or a list of up to `max_batch_rows` of them."""
        status, content, headers = await services.handle_predict(await request.body())
        return Response(content, status_code=status, media_type="application/json", headers={k.decode(): v.decode() for k, v in headers})

    @app.post(
        "/feedback",
        response_model=FeedbackAccepted,
        status_code=201,
        responses={
            200: {"model": FeedbackAccepted, "description": "The same label was already stored (idempotent retry)."},
            404: {"model": ProblemDetail, "description": "No logged prediction has this request_id."},
            409: {"model": ProblemDetail, "description": "This request_id already has a different label."},
            422: {"model": ProblemDetail, "description": "Invalid body."},
            503: {"model": ProblemDetail, "description": "The prediction log is unreachable."},
        },
        summary="Record the true value of a logged prediction",
    )
    async def feedback(body: Feedback) -> Response:
        """Labels arrive later in real life. Sending the same label again is accepted (200, unchanged);
        a different label for an id that already has one is refused with 409: labels are immutable."""
        try:
            outcome = await asyncio.to_thread(services.prediction_log.record_feedback, body.request_id, body.actual)
        except SQLAlchemyError as error:
            return problem(503, f"the prediction log is unreachable ({first_line(error, 200)})")
        services.metrics.feedback.labels(outcome).inc()
        if outcome == FeedbackResult.UNKNOWN_REQUEST:
            return problem(404, f"no logged prediction has request_id {body.request_id!r}")
        if outcome == FeedbackResult.CONFLICT:
            return problem(409, f"request_id {body.request_id!r} already has a different label; labels are immutable")
        status = "recorded" if outcome == FeedbackResult.CREATED else "unchanged"
        return json_response({"request_id": body.request_id, "status": status}, 201 if status == "recorded" else 200)

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: a production model is loaded", responses={503: {"description": "Not ready, with the reason."}})
    async def ready() -> Response:
        services.update_gauges()
        model = services.model_service.current
        status = services.model_service.status
        log = services.prediction_log.status()
        details = {
            "model": {"name": model.name, "version": model.version, "loaded_at": model.loaded_at.isoformat()} if model else None,
            "registry": {
                "uri": settings.tracking_uri,
                "reachable": status.reachable,
                "last_check": status.last_check.isoformat() if status.last_check else None,
                "last_error": status.last_error,
            },
            "prediction_log": {"pending_rows": log.pending_rows, "written_rows": log.written_rows, "last_error": log.last_error},
        }
        if model is None:
            return json_response({"status": "not ready", "reason": services.model_service.unavailable_reason(), **details}, 503)
        return json_response({"status": "ready", **details})

    @app.get("/model", summary="The served model: name, version, alias, run, training metrics, loaded-at")
    async def model_info() -> Response:
        model = services.model_service.require()
        return json_response({
            "name": model.name, "version": model.version, "alias": model.alias, "candidate": model.candidate,
            "run_id": model.run_id, "metrics": model.metrics, "loaded_at": model.loaded_at.isoformat(),
            "compiled_predict": model.fast_predict is not None, "history": list(services.model_service.status.history),
        })

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        services.update_gauges()
        content, content_type = services.metrics.exposition()
        return Response(content, media_type=content_type)

    def require_admin(authorization: Annotated[str | None, Header(description="Bearer <HOUSING_ADMIN_TOKEN>")] = None) -> None:
        expected = settings.admin_token.get_secret_value() if settings.admin_token else None
        if not expected:
            raise HTTPException(403, "the admin endpoint is disabled: set HOUSING_ADMIN_TOKEN to enable it")
        if not authorization:
            raise HTTPException(401, "missing admin token: send 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected.encode()):
            raise HTTPException(403, "wrong admin token")

    @app.post("/admin/reload", dependencies=[Depends(require_admin)], summary="Check the production alias now and reload if it moved",
              responses={401: {"description": "No token."}, 403: {"description": "Wrong token, or admin disabled."}})
    async def reload_model() -> Response:
        before = services.model_service.current
        changed = await asyncio.to_thread(services.refresh_model)
        after = services.model_service.current
        return json_response({
            "changed": changed,
            "previous_version": before.version if before else None,
            "version": after.version if after else None,
            "registry_error": services.model_service.status.last_error,
        })

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["HousingFeatures"] = HousingFeatures.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
