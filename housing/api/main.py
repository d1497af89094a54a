"""The app factory: settings, services, middleware, error handlers and routers; no I/O."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from housing.api.body_reading import BodyLimits
from housing.api.fast_path import PredictFastPath
from housing.api.lifespan import lifespan
from housing.api.openapi import install_openapi
from housing.api.prediction_logging import log_batch
from housing.api.problems import install_exception_handlers
from housing.api.routes import admin, feedback, operations, predict
from housing.api.services import Services
from housing.config.settings import Settings, get_settings
from housing.serving.prometheus import MetricsMiddleware

SERVER_FLAGS = ("--http=httptools", "--timeout-keep-alive=5")
"""uvicorn's flags wherever the API is served (make serve, the image, compose, Kubernetes, the tests).
httptools, not h11: h11 bounds a request's head (--h11-max-incomplete-event-size) but answers /predict 2-3x
slower. Idle keep-alive connections close after 5 s. No --limit-concurrency: uvicorn never closes a
connection that sends nothing, so that many idle sockets would turn every new request into a 503."""

DESCRIPTION = (
    "Serves the version of the `CaliforniaHousing` model that the MLflow registry's `production` alias "
    "names, and switches without a restart when the alias moves. Every prediction is logged with a "
    "`request_id`; send the true value to `/feedback` when it is known. Units: `MedHouseVal` is in "
    "$100,000 (1990 dollars); `price_usd` is the same value in dollars."
)


def create_app(settings: Settings | None = None, *, fast_path: bool = True) -> FastAPI:
    """Build the API (no I/O here: the lifespan starts the log writer and the registry follower).

    ``fast_path`` puts :class:`PredictFastPath` in front of the router to answer POST /predict; without
    it the documented route answers, with the same handler.
    """
    settings = settings or get_settings()
    services = Services(settings)
    for batcher in (services.batcher, services.canary_batcher):  # a micro-batch is logged in one step
        batcher.on_predicted = partial(log_batch, services)
    app = FastAPI(
        title="California housing price API",
        version="1.0",
        summary="Predicts the median house value of a California district and logs every prediction.",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(
        BodyLimits, settings=settings
    )  # inner: reads the bodies the fast path does not, within the limits
    if fast_path:
        app.add_middleware(
            PredictFastPath, services=services
        )  # answers POST /predict without the router, within the same limits
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)  # outer: counts every request
    install_exception_handlers(app)
    app.include_router(predict.create_router(settings.max_batch_rows))
    app.include_router(feedback.router)
    app.include_router(operations.router)
    app.include_router(admin.router)
    install_openapi(app)
    return app
