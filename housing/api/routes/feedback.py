"""POST /feedback: the true value of a logged prediction, recorded once (labels are immutable), from a
labeller holding the feedback token (labels steer retraining, so an open endpoint invites label poisoning)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from housing.api.deps import FeedbackTokenDep, ServicesDep
from housing.api.problems import problem_response
from housing.api.responses import json_response
from housing.api.schemas import Feedback, FeedbackAccepted, ProblemDetail
from housing.errors import first_line
from housing.prediction_log import FeedbackResult

router = APIRouter()


@router.post(
    "/feedback",
    response_model=FeedbackAccepted,
    status_code=201,
    dependencies=[FeedbackTokenDep],
    responses={
        200: {"model": FeedbackAccepted, "description": "The same label was already stored (idempotent retry)."},
        401: {"model": ProblemDetail, "description": "No bearer token (`WWW-Authenticate: Bearer`)."},
        403: {"model": ProblemDetail, "description": "Wrong feedback token."},
        404: {"model": ProblemDetail, "description": "No logged prediction has this request_id."},
        409: {"model": ProblemDetail, "description": "This request_id already has a different label."},
        422: {"model": ProblemDetail, "description": "Invalid body."},
        503: {"model": ProblemDetail, "description": "The prediction log is unreachable, or the token is not loaded yet."},
    },
    summary="Record the true value of a logged prediction",
)
async def feedback(body: Feedback, services: ServicesDep) -> Response:
    """Needs `Authorization: Bearer <feedback token>` (HOUSING_FEEDBACK_TOKEN, else the token the API generated in
    `<artifacts>/secrets/feedback_token`). Labels arrive later in real life. Sending the same label again is accepted
    (200, unchanged); a different label for an id that already has one is refused with 409: labels are immutable."""
    try:
        outcome = await asyncio.to_thread(services.prediction_log.record_feedback, body.request_id, body.actual)
    except SQLAlchemyError as error:
        return problem_response(503, f"the prediction log is unreachable ({first_line(error, 200)})")
    services.metrics.feedback.labels(outcome).inc()
    if outcome == FeedbackResult.UNKNOWN_REQUEST:
        return problem_response(404, f"no logged prediction has request_id {body.request_id!r}")
    if outcome == FeedbackResult.CONFLICT:
        return problem_response(409, f"request_id {body.request_id!r} already has a different label; labels are immutable")
    status = "recorded" if outcome == FeedbackResult.CREATED else "unchanged"
    return json_response({"request_id": body.request_id, "status": status}, 201 if status == "recorded" else 200)
