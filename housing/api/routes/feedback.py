"""POST /feedback: the true value of a logged prediction, recorded once (labels are immutable), from a
labeller holding the feedback token (labels steer retraining, so an open endpoint invites label poisoning).

A label may arrive before its prediction is in the database: still in this worker's buffer, or in another
worker's that has not flushed yet. The route then asks again after short ``asyncio.sleep`` pauses (no thread
is held while waiting; each look-up is one bounded database call in a worker thread), for up to two flush
intervals. An id still unknown after that is a 404 with ``Retry-After``: the id may be mistyped, or its
prediction not yet logged. 404 rather than 409 (which here means "already has a different label", final) or
425 (defined for TLS early data): the truth right now is "no logged prediction has this id", and a client
that knows it sent a real id retries after the hinted delay.
"""

from __future__ import annotations

import asyncio
import logging
import math

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from housing.api.deps import LabellerDep, ServicesDep
from housing.api.problems import problem_response
from housing.api.responses import json_response
from housing.api.schemas import Feedback, FeedbackAccepted, ProblemDetail
from housing.api.services import Services
from housing.errors import first_line, masked_first_line
from housing.schema import TARGET, plausible_label_range
from housing.store.interval_state import label_outcome, record_label
from housing.store.prediction_log import FeedbackResult, LogUnavailable, PredictionLog

logger = logging.getLogger(__name__)
router = APIRouter()

FIRST_PAUSE_SECONDS = 0.01
"""First pause before asking the log again; pauses double up to one flush interval."""
MAX_WAIT_SECONDS = 5.0
"""Longest a label waits for its prediction to reach the database, whatever the flush interval."""


async def record_when_logged(
    log: PredictionLog, request_id: str, actual: float, labeller: str | None = None
) -> str:
    """Record the label, asking again while the prediction is not in the database yet (PENDING or
    UNKNOWN_REQUEST) for up to two flush intervals; the last outcome. Raises SQLAlchemyError when the database
    cannot be reached.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(2 * log.flush_interval, MAX_WAIT_SECONDS)
    pause = FIRST_PAUSE_SECONDS
    while True:
        outcome = await asyncio.to_thread(log.record_feedback, request_id, actual, labeller)
        left = deadline - loop.time()
        if outcome not in (FeedbackResult.PENDING, FeedbackResult.UNKNOWN_REQUEST) or left <= 0:
            return outcome
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, log.flush_interval)


def implausible_label(services: Services, actual: float) -> str | None:
    """Why ``actual`` is no price a district can have at the served version's price level, or None."""
    served = services.model_service.current
    index = served.price_index if served is not None else 1.0
    low, high = plausible_label_range(index, services.settings.label_price_tolerance)
    if low <= actual <= high:
        return None
    return (
        f"actual {actual:g} is outside what a district can plausibly be worth at the served version's price"
        f" level ({low:.3f} to {high:.3f} {TARGET.unit}: the data's range at price index {index:.3f}, widened"
        f" {services.settings.label_price_tolerance:g} times; HOUSING_LABEL_PRICE_TOLERANCE)"
    )


def calibrated_level(services: Services, version: str) -> float:
    """The level the labelled version's interval was calibrated to (the setting when it is not loaded)."""
    for model in (services.model_service.current, services.challenger()):
        if model is not None and model.version == version and model.interval is not None:
            return model.interval.level
    return services.settings.interval_level


def keep_interval_calibrated(services: Services, request_id: str) -> None:
    """Move the labelled version's interval state by this label (:mod:`housing.store.interval_state`); a
    database error is logged, never the label's failure (the label is stored)."""
    engine = services.prediction_log.engine
    try:
        outcome = label_outcome(engine, request_id)
        if outcome is not None:
            record_label(engine, outcome, calibrated_level(services, outcome.model_version))
    except SQLAlchemyError as error:
        logger.warning("interval state: the label of %s was not counted (%s)", request_id, first_line(error))


@router.post(
    "/feedback",
    response_model=FeedbackAccepted,
    status_code=201,
    responses={
        200: {
            "model": FeedbackAccepted,
            "description": (
                "The same label was already stored (idempotent retry, also when sent twice at once)."
            ),
        },
        401: {"model": ProblemDetail, "description": "No bearer token (`WWW-Authenticate: Bearer`)."},
        403: {"model": ProblemDetail, "description": "Wrong feedback token."},
        429: {
            "model": ProblemDetail,
            "description": "This labeller sent labels faster than its rate (`Retry-After`).",
        },
        404: {
            "model": ProblemDetail,
            "description": (
                "No logged prediction has this request_id (yet: `Retry-After` says when to ask again)."
            ),
        },
        409: {"model": ProblemDetail, "description": "This request_id already has a different label."},
        422: {
            "model": ProblemDetail,
            "description": "Invalid body, or a label no district can plausibly have at today's prices.",
        },
        503: {
            "model": ProblemDetail,
            "description": (
                "The prediction log is unreachable or behind (`Retry-After`), or the token is not loaded yet."
            ),
        },
    },
    summary="Record the true value of a logged prediction",
)
async def feedback(body: Feedback, services: ServicesDep, labeller: LabellerDep) -> Response:
    """Needs `Authorization: Bearer <token>`: a named labeller's (`python -m housing.store.labellers add
    NAME`), or the default labeller's (HOUSING_FEEDBACK_TOKEN, else the token the API generated in
    `<artifacts>/secrets/feedback_token`); each label is stored with its labeller's name. Labels arrive later
    in real life. Sending the same label again is accepted (200, unchanged); a different label for an id that
    already has one is refused with 409: labels are immutable. A label outside what a district can plausibly
    be worth at today's price level is a 422.
    """
    log = services.prediction_log
    busy = {"Retry-After": str(LogUnavailable.retry_after)}
    implausible = implausible_label(services, body.actual)
    if implausible:
        services.metrics.feedback.labels("implausible").inc()
        return problem_response(422, implausible)
    try:
        outcome = await record_when_logged(log, body.request_id, body.actual, labeller)
    except SQLAlchemyError as error:
        services.metrics.feedback.labels("unavailable").inc()
        reason = masked_first_line(error, services.settings.log_database_url, limit=200)
        return problem_response(503, f"the prediction log is unreachable ({reason})", headers=busy)
    services.metrics.feedback.labels(outcome).inc()
    if outcome == FeedbackResult.PENDING:
        return problem_response(
            503,
            f"the prediction of request_id {body.request_id!r} is not in the prediction log's database yet "
            f"(the log is behind: {log.last_error or 'writing'}); retry",
            headers=busy,
        )
    if outcome == FeedbackResult.UNKNOWN_REQUEST:
        retry = str(max(1, math.ceil(2 * log.flush_interval)))
        return problem_response(
            404,
            f"no logged prediction has request_id {body.request_id!r} (a prediction served in the last "
            f"seconds may not be logged yet: retry after {retry} s)",
            headers={"Retry-After": retry},
        )
    if outcome == FeedbackResult.CONFLICT:
        return problem_response(
            409, f"request_id {body.request_id!r} already has a different label; labels are immutable"
        )
    if outcome == FeedbackResult.CREATED:
        await asyncio.to_thread(keep_interval_calibrated, services, body.request_id)
    status = "recorded" if outcome == FeedbackResult.CREATED else "unchanged"
    return json_response(
        {"request_id": body.request_id, "status": status}, 201 if status == "recorded" else 200
    )
