"""Everything the routes share, created once per app: settings, Prometheus metrics, the model service,
the micro-batcher, the prediction log and the labellers' token; and the task that follows the registry's production alias."""

from __future__ import annotations

import asyncio
import gc
import logging

from housing.config import Settings
from housing.prediction_log import PredictionLog
from housing.prometheus import Metrics
from housing.serving import MicroBatcher, ModelService

logger = logging.getLogger(__name__)


class Services:
    """Everything a request handler needs, created once per app (no I/O: the lifespan starts the log)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.model_service = ModelService(settings)
        self.batcher = MicroBatcher(self.model_service, on_batch=self.metrics.batch_rows.observe)
        self.prediction_log = PredictionLog.from_settings(settings)
        self.feedback_token: str | None = None  # set by the lifespan (housing.credentials); None refuses every label
        self._logged_rows = 0
        self._failed_flushes = 0

    def refresh_model(self) -> bool:
        """Check the production alias and load its version if it moved; True when the served model changed."""
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
        """Bring the served-model, registry and prediction-log metrics up to date."""
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


async def follow_registry(services: Services) -> None:
    """Check the production alias now and then every ``reload_interval`` seconds; swap models when it moves."""
    while True:
        try:
            await asyncio.to_thread(services.refresh_model)
        except Exception:
            logger.exception("registry check crashed")
        await asyncio.sleep(services.settings.reload_interval)
