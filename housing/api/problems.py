"""The one way a client error becomes a response: the documented problem body ``{"detail": ..., "errors":
[...]}``.

``detail`` is one sentence saying what is wrong; ``errors`` (validation errors only) names the row, the
field and the rule of each error, the first ``max_listed_errors`` of them (the detail counts the rest, so
a body with 560,000 bad keys gets a short answer). The predict handler renders its errors with
:func:`problem_body`; routes raise :class:`InputError` or an ``HTTPException``, or return
:func:`problem_response`; the handlers :func:`install_exception_handlers` registers turn every raised error
(the framework's own validation, 404/405 and the admin 401/403 included) into the same body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException

from housing.api.deps import get_services
from housing.api.schemas import Feedback
from housing.config.settings import Settings
from housing.errors import hide_local_paths
from housing.schema import FEATURE_NAMES, SPECS_BY_NAME
from housing.serving.model_service import ModelUnavailable

FEEDBACK_FIELDS: tuple[str, ...] = tuple(Feedback.model_fields)
"""The fields a /feedback body may have, named when an unknown one is sent."""
DEFAULT_MAX_LISTED_ERRORS: int = Settings.model_fields["max_listed_errors"].default
"""Entries of an error list when no app's settings say otherwise (a request built outside an app)."""


class InputError(Exception):
    """A client error with an HTTP status and one sentence."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors


def describe_errors(
    errors: Sequence[Mapping[str, Any]],
    *,
    batch: bool,
    prefix: tuple[Any, ...] = (),
    expected: tuple[str, ...] = FEATURE_NAMES,
) -> list[dict[str, Any]]:
    """Turn pydantic errors into entries naming the row, the field and the rule."""
    described = []
    for error in errors:
        loc = tuple(error["loc"])[len(prefix) :]
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
        described.append(
            {"row": row, "field": field, "type": error["type"], "message": f"{where}: {message}"}
        )
    return described


def validation_problem(described: list[dict[str, Any]], count: int | None = None) -> InputError:
    """A 422 listing ``described`` (the first ``count`` errors, all when None); its sentence is the first
    error's, plus how many more there are and, when not all are listed, how many are."""
    count = len(described) if count is None else count
    more = f" (and {count - 1:,} more error(s)" if count > 1 else ""
    if more and len(described) < count:
        more += f"; the first {len(described):,} are listed"
    first = described[0]["message"] if described else "the body is not valid"
    return InputError(422, first + more + (")" if more else ""), described)


def problem_body(detail: str, errors: list[dict[str, Any]] | None = None) -> bytes:
    """The JSON problem body: ``detail``, and ``errors`` when there are any."""
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return orjson.dumps(body)


def problem_response(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A problem body as a response with ``status`` and optional extra headers."""
    return Response(
        problem_body(detail, errors), status_code=status, media_type="application/json", headers=headers
    )


def retry_after(settings: Settings) -> str:
    """Seconds a client should wait before asking again when no model is loaded (one registry check)."""
    return str(int(settings.reload_interval))


RawHeaders = list[tuple[bytes, bytes]]


def unavailable(detail: str, retry_after_seconds: str) -> tuple[int, bytes, RawHeaders]:
    """503 with ``Retry-After``, as (status, problem body, raw headers); no server path in the sentence."""
    return 503, problem_body(hide_local_paths(detail)), [(b"retry-after", retry_after_seconds.encode())]


def model_unavailable(error: ModelUnavailable, settings: Settings) -> tuple[int, bytes, RawHeaders]:
    """No production model is loaded: 503, with Retry-After set to the registry check interval."""
    return unavailable(str(error), retry_after(settings))


async def handle_input_error(_: Request, error: Exception) -> Response:
    """Render an :class:`InputError` raised by a route."""
    assert isinstance(error, InputError)
    return problem_response(error.status, error.detail, error.errors)


async def handle_request_validation_error(request: Request, error: Exception) -> Response:
    """Render the framework's body validation (of /feedback) like the predict handler's: 400 or 422."""
    assert isinstance(error, RequestValidationError)
    errors = list(error.errors())
    if any(e["type"] == "json_invalid" for e in errors):
        return problem_response(400, "the request body is not valid JSON")
    listed = describe_errors(
        errors[: max_listed_errors(request)], batch=False, prefix=("body",), expected=FEEDBACK_FIELDS
    )
    problem = validation_problem(listed, len(errors))
    return problem_response(problem.status, problem.detail, problem.errors)


def max_listed_errors(request: Request) -> int:
    """The app's ``max_listed_errors`` (the default for a request built outside an app)."""
    app = request.scope.get("app")
    return app.state.services.settings.max_listed_errors if app is not None else DEFAULT_MAX_LISTED_ERRORS


async def handle_http_exception(_: Request, error: Exception) -> Response:
    """Render an HTTP exception (404, 405, the admin 401/403) with its headers, e.g. WWW-Authenticate."""
    assert isinstance(error, HTTPException)
    if not is_body_allowed_for_status_code(error.status_code):
        return Response(status_code=error.status_code, headers=error.headers)
    return problem_response(error.status_code, error.detail, headers=error.headers)


async def handle_model_unavailable(request: Request, error: Exception) -> Response:
    """Render :func:`model_unavailable` for a route."""
    assert isinstance(error, ModelUnavailable)
    status, body, headers = model_unavailable(error, get_services(request).settings)
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={name.decode(): value.decode() for name, value in headers},
    )


def install_exception_handlers(app: FastAPI) -> None:
    """Register the handlers that render every raised client error as a problem body."""
    app.add_exception_handler(InputError, handle_input_error)
    app.add_exception_handler(RequestValidationError, handle_request_validation_error)
    app.add_exception_handler(HTTPException, handle_http_exception)
    app.add_exception_handler(ModelUnavailable, handle_model_unavailable)
