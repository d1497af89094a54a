"""The served model: follows the registry's production (and staging) alias without a restart.

``ModelService`` holds one immutable ``LoadedModel``. A refresh loads a new version completely (download,
skops load, compiled path verified, warm-up prediction) before it swaps the reference, so a request either
runs wholly on the old model or wholly on the new one and none fails during a switch.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sklearn

from housing.config.settings import Settings
from housing.errors import UserError, mask_uri, masked_first_line
from housing.registry.versions import get_version_by_alias, load_version, registry_client
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES
from housing.serving.compiled import StepPath, fast_predict_or_default, step_paths
from housing.serving.intervals import ServedInterval, serve_interval
from housing.training.intervals import load_interval

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    """No production model is loaded; the message says why and what to do."""


def served_interval(
    client: Any, version: Any, price_index: float
) -> tuple[ServedInterval | None, str | None]:
    """The version's prediction interval, compiled, or None and why."""
    try:
        calibration = load_interval(client, version)
    except UserError as error:
        logger.warning("%s; serving version %s without an interval", error, version.version)
        return None, str(error)
    if calibration is None:
        return None, f"version {version.version} was registered without a prediction interval"
    return serve_interval(calibration, price_index), None


@dataclass(frozen=True)
class LoadedModel:
    """A registered version loaded in memory, with what /model reports about it."""

    pipeline: Pipeline
    name: str
    version: str
    alias: str
    run_id: str | None
    metrics: dict[str, float]
    loaded_at: datetime
    candidate: str | None = None
    fast_predict: Callable[[np.ndarray], np.ndarray] | None = None
    """The compiled predict path (housing.serving.compiled), set only when it reproduces pipeline.predict."""
    steps: tuple[StepPath, ...] = ()
    """What runs for each pipeline step: compiled array arithmetic, or the library's own transform/predict."""
    price_index: float = 1.0
    """The price level the version was trained at (its run's ``price_index`` tag; 1.0 for the original)."""
    interval: ServedInterval | None = None
    """The version's prediction interval (None: registered without one, or it did not load)."""
    interval_note: str | None = None
    """Why there is no interval, when there is none."""

    @property
    def predict_path(self) -> list[dict[str, object]]:
        """Per step, what really runs (all library when the compiled path was not verified), for /model."""
        return [
            {
                "name": step.name,
                "kind": step.kind,
                "compiled": step.compiled and self.fast_predict is not None,
            }
            for step in self.steps
        ]

    @property
    def compiled_predict(self) -> bool:
        """Every step runs compiled, on a path verified against ``pipeline.predict``."""
        return self.fast_predict is not None and all(step.compiled for step in self.steps)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predict an (n, 8) float64 array of raw features in contract order (validated by the API)."""
        if self.fast_predict is not None:
            return self.fast_predict(features)
        frame = pd.DataFrame(features, columns=list(FEATURE_NAMES), copy=False)
        with sklearn.config_context(assume_finite=True):
            return np.asarray(self.pipeline.predict(frame), dtype=float)


@dataclass(frozen=True)
class FailedVersion:
    """A version the production alias named that could not be loaded: not tried again until the alias
    moves."""

    version: str
    reason: str
    """Why, in one masked line."""
    failed_at: datetime


@dataclass
class RegistryStatus:
    """What the last look at the registry found."""

    reachable: bool | None = None
    last_check: datetime | None = None
    last_error: str | None = None
    reloads: int = 0
    checks: int = 0
    """Looks at the registry since the start, failed ones included."""
    failed_checks: int = 0
    history: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    alias_version: str | None = None
    """The version the production alias named at the last successful check (None: it named none)."""
    failed_version: FailedVersion | None = None
    """The version the alias names that failed to load, remembered so that it is not loaded again and
    again."""

    @property
    def alias_missing(self) -> bool:
        """The registry answered and no version has the production alias."""
        return self.reachable is True and self.alias_version is None


class ModelService:
    """Loads the version an alias names (``production`` unless told otherwise), and reloads when the alias
    moves.

    A version that fails to load is remembered (:attr:`RegistryStatus.failed_version`) and not loaded again
    until the alias names another version or the process restarts; the current model keeps serving. So does
    it when the production alias is removed: the service keeps the last version it loaded and says so in
    ``last_error``. An *optional* alias (the challenger's ``staging``) is different: when it is removed, the
    service unloads its model. A version ``peer`` (the other alias's service) has loaded is shared, not loaded
    twice, so promoting the challenger swaps in the very model that was shadow-scored, at once.
    Every error sentence has the credentials of the tracking URI masked (:mod:`housing.errors`).
    """

    def __init__(
        self,
        settings: Settings,
        alias: str | None = None,
        *,
        optional: bool = False,
        peer: ModelService | None = None,
    ) -> None:
        self.settings = settings
        self.alias = alias or settings.production_alias
        self.optional = optional
        self.peer = peer
        self._current: LoadedModel | None = None
        self._refresh_lock = threading.Lock()
        self.status = RegistryStatus()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        """The loaded model, or :class:`ModelUnavailable` with a sentence saying what to do."""
        model = self._current
        if model is None:
            raise ModelUnavailable(self.unavailable_reason())
        return model

    def unavailable_reason(self) -> str:
        if self.status.reachable is None:
            return "no model is loaded yet: the first look at the model registry has not finished"
        if self.status.reachable is False:
            return (
                f"no model is loaded: the model registry at {mask_uri(self.settings.tracking_uri)} is"
                f" unreachable ({self.status.last_error})"
            )
        return f"no model is loaded: {self.status.last_error}"

    def refresh(self) -> bool:
        """Check the alias and load its version if it is not the one served; True when the model changed.

        Any failure keeps the current model serving and is recorded in :attr:`status`.
        """
        with self._refresh_lock:
            try:
                return self._refresh()
            finally:
                self.status.last_check = datetime.now(UTC)
                self.status.checks += 1

    def _refresh(self) -> bool:
        name, alias = self.settings.model_name, self.alias
        try:
            client = registry_client(self.settings.tracking_uri)
            version = get_version_by_alias(client, name, alias)
        except Exception as error:  # noqa: BLE001 - an unreachable registry must not stop serving
            self._registry_failed(error)
            return False
        self.status.reachable = True
        if version is None:
            self._alias_missing(name, alias)
            return False
        number = str(version.version)
        self.status.alias_version = number
        if self._current is not None and self._current.version == number:
            self.status.failed_version = self.status.last_error = None  # back on the served version
            return False
        failed = self.status.failed_version
        if failed is not None and failed.version == number:
            self.status.last_error = self._failure_sentence(
                failed
            )  # remembered: not downloaded and loaded again
            return False
        try:
            loaded = self._shared(number) or self._load(client, version, alias)
        except Exception as error:  # noqa: BLE001 - a broken version must not replace a working one
            self._load_failed(client, number, error)
            return False
        self._serve(loaded)
        return True

    def _shared(self, number: str) -> LoadedModel | None:
        """The peer's model when it is this version (same pipeline and compiled path, this service's
        alias)."""
        theirs = self.peer.current if self.peer is not None else None
        if theirs is None or theirs.version != number:
            return None
        return dataclasses.replace(theirs, alias=self.alias, loaded_at=datetime.now(UTC))

    def _registry_failed(self, error: Exception) -> None:
        self.status.reachable = False
        self.status.failed_checks += 1
        self.status.last_error = masked_first_line(error, self.settings.tracking_uri)
        logger.warning("registry check failed, serving %s: %s", self._describe(), self.status.last_error)

    def _alias_missing(self, name: str, alias: str) -> None:
        if self.optional:  # no challenger: nothing is wrong
            if self._current is not None:
                logger.info(
                    "the '%s' alias of %s was removed: version %s unloaded",
                    alias,
                    name,
                    self._current.version,
                )
                self.status.history.append(
                    f"{datetime.now(UTC).isoformat(timespec='seconds')} unloaded version"
                    f" {self._current.version}"
                )
            self._current = None
            self.status.alias_version = self.status.failed_version = self.status.last_error = None
            return
        if self.status.alias_version is not None or self.status.last_error is None:
            logger.warning("no version of %s has the alias '%s'; serving %s", name, alias, self._describe())
        self.status.alias_version = None
        self.status.failed_version = None
        self.status.last_error = f"no version of {name} has the alias '{alias}'" + (
            f"; still serving version {self._current.version}, the last one it named"
            if self._current
            else "; run the pipeline (make pipeline) to train and promote one"
        )

    def _load_failed(self, client: Any, number: str, error: Exception) -> None:
        """Remember the version that failed, unless the registry went away meanwhile (then it is the outage,
        not the version, and the next check tries again)."""
        reason = f"{type(error).__name__}: {masked_first_line(error, self.settings.tracking_uri)}"
        try:
            get_version_by_alias(client, self.settings.model_name, self.alias)
        except Exception as registry_error:  # noqa: BLE001 - the registry is down: not the version's fault
            self._registry_failed(registry_error)
            return
        failed = FailedVersion(number, reason, datetime.now(UTC))
        self.status.failed_version = failed
        self.status.last_error = self._failure_sentence(failed)
        logger.error("%s", self.status.last_error)

    def _failure_sentence(self, failed: FailedVersion) -> str:
        serving = f"still serving {self._describe()}" if self._current else "no other version to serve"
        return (
            f"could not load {self.settings.model_name} version {failed.version} ({failed.reason});"
            f" {serving}; version {failed.version} is not tried again until the '{self.alias}' alias names"
            " another version or the service restarts"
        )

    def _serve(self, loaded: LoadedModel) -> None:
        previous = self._current
        self._current = loaded
        self.status.failed_version = self.status.last_error = None
        self.status.reloads += 1
        role = f"'{self.alias}' (challenger) is now" if self.optional else "now serving"
        message = f"{role} {loaded.name} version {loaded.version} ({loaded.candidate})" + (
            f", was version {previous.version}" if previous else ""
        )
        self.status.history.append(f"{loaded.loaded_at.isoformat(timespec='seconds')} {message}")
        logger.info(message)

    def _load(self, client: Any, version: Any, alias: str) -> LoadedModel:
        pipeline = load_version(client, version)
        metrics: dict[str, float] = {}
        price_index = 1.0
        if version.run_id:
            try:
                run = client.get_run(version.run_id)
                metrics = dict(run.data.metrics)
                price_index = float(run.data.tags.get("price_index", "1"))
            except Exception:  # noqa: BLE001 - metrics are informative only
                logger.warning("could not read the metrics of run %s", version.run_id)
        fast_predict, compiled = fast_predict_or_default(pipeline)
        steps = tuple(step_paths(pipeline))
        library = [step.kind for step in steps if not step.compiled]
        logger.info(
            "%s version %s: %s",
            version.name,
            version.version,
            (
                (
                    "compiled predict path verified against pipeline.predict"
                    + (
                        f" (the library's own code runs for {', '.join(library)})"
                        if library
                        else " (every step compiled)"
                    )
                )
                if compiled
                else "serving with pipeline.predict"
            ),
        )
        interval, interval_note = (
            served_interval(client, version, price_index)
            if self.settings.serve_intervals
            else (None, "prediction intervals are off (HOUSING_SERVE_INTERVALS)")
        )
        loaded = LoadedModel(
            pipeline=pipeline,
            fast_predict=fast_predict if compiled else None,
            name=version.name,
            version=str(version.version),
            alias=alias,
            run_id=version.run_id,
            metrics=metrics,
            loaded_at=datetime.now(UTC),
            candidate=(version.tags or {}).get("candidate"),
            steps=steps,
            price_index=price_index,
            interval=interval,
            interval_note=interval_note,
        )
        example = np.array([[EXAMPLE_REQUEST[name] for name in FEATURE_NAMES]])
        predicted = loaded.predict(example)  # warm-up: the first request pays no compilation
        if interval is not None:
            interval.bounds(example, predicted)
        return loaded

    def _describe(self) -> str:
        return f"version {self._current.version}" if self._current else "no model"
