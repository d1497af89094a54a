"""Everything the routes share, created once per app: settings, Prometheus metrics, the champion's and the
challenger's model services and micro-batchers, the prediction log, the shadow scorer, who the labellers and
the clients are and their rate limits; and the tasks that follow the registry's aliases and the labellers'
tokens."""

from __future__ import annotations

import asyncio
import gc
import logging

from sqlalchemy.exc import SQLAlchemyError

from housing.api.credentials import ClientDirectory, LabellerDirectory
from housing.api.rate_limits import RateLimiter
from housing.config.settings import Settings
from housing.errors import first_line
from housing.serving.micro_batch import MicroBatcher
from housing.serving.model_service import LoadedModel, ModelService
from housing.serving.prometheus import Metrics
from housing.serving.shadow import ShadowScorer, routes_to_challenger
from housing.store.interval_state import read_state
from housing.store.prediction_log import PredictionLog

logger = logging.getLogger(__name__)


class Services:
    """Everything a request handler needs, created once per app (no I/O: the lifespan starts the log)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.reports_dir)
        self.model_service = ModelService(settings)
        self.challenger_service = ModelService(
            settings, settings.staging_alias, optional=True, peer=self.model_service
        )
        self.model_service.peer = self.challenger_service  # promoting the challenger reuses its loaded model
        self.batcher = MicroBatcher(self.model_service, on_batch=self.metrics.batch_rows.observe)
        self.canary_batcher = MicroBatcher(self.challenger_service, on_batch=self.metrics.batch_rows.observe)
        self.prediction_log = PredictionLog.from_settings(settings)
        self.shadow = ShadowScorer(
            self.prediction_log, self.metrics, self.other_model, interval=settings.shadow_interval
        )
        self.labellers = LabellerDirectory(settings.default_labeller)
        self.clients = ClientDirectory(settings)
        self.label_limits = RateLimiter(settings.feedback_labels_per_second, settings.feedback_label_burst)
        self.row_limits = RateLimiter(settings.predict_rows_per_second, settings.predict_row_burst)
        self._logged_rows = self._failed_flushes = self._dead_letters = 0

    def challenger(self) -> LoadedModel | None:
        """The challenger: the staging alias's model when it is loaded and is not the served production
        version."""
        challenger, champion = self.challenger_service.current, self.model_service.current
        if challenger is None or champion is None or challenger.version == champion.version:
            return None
        return challenger

    def other_model(self, served_alias: str) -> LoadedModel | None:
        """The model that did not answer a request ``served_alias`` answered (its shadow), if there is one."""
        if served_alias == self.settings.production_alias:
            return self.challenger()
        return self.model_service.current

    def route(self, key: bytes | None, request_id: str) -> MicroBatcher:
        """The batcher that answers a request: the challenger's for the canary share (stable in ``key``, else
        in the request id) when a challenger is loaded, production's otherwise."""
        percent = self.settings.canary_percent
        if (
            percent
            and self.challenger() is not None
            and routes_to_challenger(key or request_id.encode(), percent)
        ):
            return self.canary_batcher
        return self.batcher

    def refresh_model(self) -> bool:
        """Check the production and staging aliases and load their versions if they moved; True when the
        served model changed."""
        changed = self.model_service.refresh()
        challenger_changed = self.challenger_service.refresh()
        self.update_gauges()
        if changed or challenger_changed:
            self.metrics.reloads.inc(int(changed))
            # Move the long-lived objects (libraries, the model) out of the collector's reach, so that
            # garbage collection under load scans only request garbage and never pauses for ~100 ms.
            gc.collect()
            gc.freeze()
        return changed

    def update_gauges(self) -> None:
        """Bring the served-model, registry and prediction-log metrics up to date."""
        model = self.model_service.current
        self.metrics.set_served_model(
            model.name if model else None, model.version if model else None, self.settings.production_alias
        )
        challenger = self.challenger()
        self.metrics.set_served_model(
            challenger.name if challenger else None,
            challenger.version if challenger else None,
            self.settings.staging_alias,
            production=False,
        )
        self.metrics.set_predict_path(
            self.settings.production_alias,
            model.version if model else None,
            model.predict_path if model else [],
        )
        self.metrics.set_predict_path(
            self.settings.staging_alias,
            challenger.version if challenger else None,
            challenger.predict_path if challenger else [],
        )
        reachable = self.model_service.status.reachable
        self.metrics.registry_up.set(1 if reachable else 0)
        status = self.prediction_log.status()
        self.metrics.log_pending.set(status.pending_rows)
        self.metrics.log_rows.inc(status.written_rows - self._logged_rows)
        self._logged_rows = status.written_rows
        self.metrics.log_failed_flushes.inc(status.failed_flushes - self._failed_flushes)
        self._failed_flushes = status.failed_flushes
        self.metrics.log_dead_letters.inc(status.dead_letter_rows - self._dead_letters)
        self._dead_letters = status.dead_letter_rows


async def follow_registry(services: Services) -> None:
    """Check the production alias now and then every ``reload_interval`` seconds; swap models when it
    moves."""
    while True:
        try:
            await asyncio.to_thread(services.refresh_model)
        except Exception:
            logger.exception("registry check crashed")
        await asyncio.sleep(services.settings.reload_interval)


def refresh_shared_state(services: Services) -> None:
    """Re-read what every worker shares from the log's database: the named labellers' tokens, and the online
    state of the served versions' intervals."""
    services.labellers.refresh(services.prediction_log.engine)
    for model in {id(m): m for m in (services.model_service.current, services.challenger())}.values():
        if model is not None and model.interval is not None:
            try:
                model.interval.online = read_state(services.prediction_log.engine, model.version)
            except SQLAlchemyError as error:
                logger.warning("interval state: could not re-read it (%s)", first_line(error))


async def follow_shared_state(services: Services) -> None:
    """:func:`refresh_shared_state` every ``shared_state_refresh_seconds`` (a rotated token stops working, and
    every worker serves the same ranges, within that time)."""
    while True:
        try:
            await asyncio.to_thread(refresh_shared_state, services)
        except Exception:
            logger.exception("shared state check crashed")
        await asyncio.sleep(services.settings.shared_state_refresh_seconds)
