"""What runs beside the requests: the prediction-log writer, the shadow scorer and the registry follower, and
the final flush; and, once at startup, the labellers' token that POST /feedback checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from housing.api.credentials import ensure_feedback_token
from housing.api.services import Services, follow_registry, follow_shared_state
from housing.serving.prometheus import worker_exiting

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the feedback token, start the log writer, the shadow scorer and the registry follower; on shutdown
    stop following, score and hand over the shadow backlog, and flush every buffered row."""
    services: Services = app.state.services
    if not logging.getLogger().handlers:  # under uvicorn: our progress lines beside its own
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    await load_feedback_token(services)
    await asyncio.to_thread(services.prediction_log.start)
    services.shadow.start()
    followers = [
        asyncio.create_task(follow_registry(services), name="follow-registry"),
        asyncio.create_task(follow_shared_state(services), name="follow-shared-state"),
    ]
    try:
        yield
    finally:
        for follower in followers:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await asyncio.to_thread(
            services.shadow.close
        )  # its rows go to the log's buffer before the log's final flush
        await asyncio.to_thread(services.prediction_log.close)
        worker_exiting()
        logger.info("prediction log flushed: %d row(s) written", services.prediction_log.written_rows)


async def load_feedback_token(services: Services) -> None:
    """Give the default labeller its token (HOUSING_FEEDBACK_TOKEN, else the generated file), or warn loudly
    when HOUSING_UNSAFE_OPEN_FEEDBACK lets anyone send labels."""
    if services.settings.unsafe_open_feedback:
        logger.warning(
            "HOUSING_UNSAFE_OPEN_FEEDBACK is set: POST /feedback labels are open to anyone who can reach the"
            " API, and labels steer retraining (label poisoning); never run this way outside a private demo"
        )
        return
    try:
        token = await asyncio.to_thread(ensure_feedback_token, services.settings)
        services.labellers.set_default_token(token)
    except OSError as error:
        raise RuntimeError(
            f"cannot keep the feedback token in {services.settings.feedback_token_path} ({error.strerror}): "
            "set HOUSING_FEEDBACK_TOKEN, or make that directory writable"
        ) from None
