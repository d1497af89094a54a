"""What runs beside the requests: the prediction-log writer and the registry follower, and the final flush."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from housing.api.services import Services, follow_registry

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the log writer and the registry follower; on shutdown stop following and flush every buffered row."""
    services: Services = app.state.services
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
