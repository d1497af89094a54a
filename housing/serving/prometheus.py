"""Prometheus metrics of the API, correct with one process or several (prometheus_client multiprocess mode).

With ``PROMETHEUS_MULTIPROC_DIR`` set (the team setup runs several workers), every worker writes its
samples to that folder and /metrics aggregates all of them; otherwise a private registry per app is used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
    multiprocess,
)

from housing.serving.monitor_figures import MonitorFigures

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PREDICTION_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0)
ROUTES = frozenset(
    {
        "/predict",
        "/feedback",
        "/health",
        "/ready",
        "/model",
        "/metrics",
        "/admin/reload",
        "/docs",
        "/openapi.json",
    }
)


def multiprocess_dir() -> str | None:
    """The multiprocess folder when several workers share their metrics."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def forget_dead_workers(path: str) -> list[int]:
    """Remove the live gauges of workers that are gone (``mark_process_dead``: the client library's own
    clean-up), so a worker killed without a shutdown (kill -9, OOM) stops showing; returns their ids. Counters
    and histograms of a dead worker stay: they are totals, and dropping them would make the totals go back."""
    pids = {
        int(pid)
        for pid in (file.stem.rsplit("_", 1)[-1] for file in Path(path).glob("gauge_live*_*.db"))
        if pid.isdigit()
    }
    dead = sorted(pid for pid in pids if pid != os.getpid() and not process_alive(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return dead


class Metrics:
    """Every metric the API exposes."""

    def __init__(self, reports_dir: Path | None = None) -> None:
        path = multiprocess_dir()
        if path is not None:  # a fresh tmpfs or an emptyDir holds no folder yet; every worker may create it
            Path(path).mkdir(parents=True, exist_ok=True)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.monitor_figures = (
            MonitorFigures(reports_dir / "decision_latest.json") if reports_dir is not None else None
        )
        if self.monitor_figures is not None:
            r.register(self.monitor_figures)
        self.requests = Counter(
            "housing_http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "housing_http_request_duration_seconds",
            "HTTP request latency by route, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prediction_value = Histogram(
            "housing_prediction_value",
            "Predicted MedHouseVal (units of $100,000).",
            buckets=PREDICTION_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "housing_predictions_total", "Rows predicted, by model version.", ["model_version"], registry=r
        )
        self.model_info = Gauge(
            "housing_model_info",
            "The version loaded for each alias (value 1; 0: no longer loaded).",
            ["name", "version", "alias"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.model_loaded = Gauge(
            "housing_model_loaded",
            "1 when a production model is loaded.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.registry_up = Gauge(
            "housing_registry_up",
            "1 when the last look at the model registry succeeded.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.reloads = Counter(
            "housing_model_reloads_total", "Model switches after the production alias moved.", registry=r
        )
        self._add_log_metrics(r)
        self._add_shadow_metrics(r)
        self._served: dict[str, tuple[str, str, str]] = {}
        self._paths: dict[str, list[tuple[str, ...]]] = {}

    def _add_log_metrics(self, r: CollectorRegistry) -> None:
        """The prediction log's, the micro-batcher's and the feedback route's metrics."""
        self.log_rows = Counter(
            "housing_prediction_log_rows_total", "Rows written to the prediction log.", registry=r
        )
        self.log_pending = Gauge(
            "housing_prediction_log_pending_rows",
            "Rows buffered, not yet written to the log.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.log_failed_flushes = Counter(
            "housing_prediction_log_failed_flushes_total",
            "Batched writes of the prediction log that failed (and were retried).",
            registry=r,
        )
        self.log_dead_letters = Counter(
            "housing_log_dead_letter_rows_total",
            "Prediction-log rows the database refused for good, moved to the dead-letter file.",
            registry=r,
        )
        self.batch_rows = Histogram(
            "housing_microbatch_rows",
            "Single-row requests merged into one model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.feedback = Counter(
            "housing_feedback_total", "Feedback labels by outcome.", ["outcome"], registry=r
        )

    def _add_shadow_metrics(self, r: CollectorRegistry) -> None:
        """Rows answered per alias, the shadow scorer's metrics, and what runs for each model step."""
        self.answered = Counter(
            "housing_answered_rows_total",
            "Rows answered, by the alias of the model that answered (staging: the canary share).",
            ["alias"],
            registry=r,
        )
        self.shadow_rows = Counter(
            "housing_shadow_rows_total",
            "Rows also scored by the model that did not answer (shadow).",
            registry=r,
        )
        self.shadow_failures = Counter(
            "housing_shadow_failures_total",
            "Shadow predictions that failed or were skipped (the rows were logged without them).",
            ["reason"],
            registry=r,
        )
        self.shadow_latency = Histogram(
            "housing_shadow_predict_seconds",
            "Time of one shadow predict call (a batch of rows).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_difference = Summary(
            "housing_shadow_abs_difference",
            "|answer - shadow prediction| per row; the running mean is _sum / _count.",
            registry=r,
        )
        self.predict_path = Gauge(
            "housing_model_predict_path",
            "What runs for each step of the loaded models: path=compiled "
            "(array arithmetic) or library (its own transform/predict); value 1 (0: no longer loaded).",
            ["alias", "version", "step", "kind", "path"],
            registry=r,
            multiprocess_mode="liveall",
        )

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        code = str(status)
        self.requests.labels(route, method, code).inc()
        self.latency.labels(route, method, code).observe(seconds)

    def observe_predictions(self, values: list[float]) -> None:
        """Add predicted values to the histogram; a large batch is bucketed with numpy in one pass."""
        histogram = self.prediction_value
        buckets, total = getattr(histogram, "_buckets", None), getattr(histogram, "_sum", None)
        if len(values) <= 64 or buckets is None or total is None:
            for value in values:
                histogram.observe(value)
            return
        # prometheus_client has no bulk observe; this adds the same counts its observe() would.
        array = np.asarray(values, dtype=np.float64)
        counts = np.bincount(
            np.searchsorted(np.asarray(PREDICTION_BUCKETS), array, side="left"), minlength=len(buckets)
        )
        for bucket, count in zip(buckets, counts.tolist(), strict=False):
            if count:
                bucket.inc(count)
        total.inc(float(array.sum()))

    def set_served_model(
        self, name: str | None, version: str | None, alias: str, *, production: bool = True
    ) -> None:
        """Point housing_model_info's series of ``alias`` at the version loaded for it (and drop the previous
        one); ``production``: this alias answers the requests (housing_model_loaded follows it)."""
        served = (name, version, alias) if name and version else None
        previous = self._served.pop(alias, None)
        if served != previous:
            if previous is not None and multiprocess_dir():
                self.model_info.labels(*previous).set(
                    0
                )  # the client library cannot remove a label set across processes
            elif previous is not None:
                self.model_info.remove(*previous)
            if served is not None:
                self.model_info.labels(*served).set(1)
        if served is not None:
            self._served[alias] = served
        if production:
            self.model_loaded.set(1 if served else 0)

    def set_predict_path(self, alias: str, version: str | None, steps: list[dict[str, object]]) -> None:
        """Point housing_model_predict_path's series of ``alias`` at the loaded version's steps (no version:
        none)."""
        series: list[tuple[str, ...]] = (
            [
                (
                    alias,
                    version,
                    str(step["name"]),
                    str(step["kind"]),
                    "compiled" if step["compiled"] else "library",
                )
                for step in steps
            ]
            if version
            else []
        )
        previous = self._paths.get(alias, [])
        if series == previous:
            return
        for labels in previous:
            if multiprocess_dir():
                self.predict_path.labels(*labels).set(0)  # cannot be removed across processes
            else:
                self.predict_path.remove(*labels)
        for labels in series:
            self.predict_path.labels(*labels).set(1)
        self._paths[alias] = series

    def observe_shadow(self, answers: np.ndarray, shadow: np.ndarray, seconds: float) -> None:
        """Count a batch of shadow predictions, the predict call's time and |answer - shadow| of each row."""
        self.shadow_rows.inc(len(shadow))
        self.shadow_latency.observe(seconds)
        differences = np.abs(np.asarray(answers, dtype=np.float64) - shadow)
        total, count = (
            getattr(self.shadow_difference, "_sum", None),
            getattr(self.shadow_difference, "_count", None),
        )
        if (
            total is None or count is None
        ):  # prometheus_client has no bulk observe; this adds what observe() would
            for value in differences.tolist():
                self.shadow_difference.observe(value)
            return
        total.inc(float(differences.sum()))
        count.inc(len(differences))

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format of every metric (aggregated over the live workers in multiprocess
        mode)."""
        path = multiprocess_dir()
        if path:
            forget_dead_workers(path)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            if self.monitor_figures is not None:
                registry.register(self.monitor_figures)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def worker_exiting() -> None:
    """Remove this worker's live gauges on a graceful exit (multiprocess mode only)."""
    path = multiprocess_dir()
    if path:
        multiprocess.mark_process_dead(os.getpid(), path)


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them by route, method and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe_request(
                scope["path"], scope["method"], status, time.perf_counter() - started
            )
