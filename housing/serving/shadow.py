"""The challenger on live traffic: shadow scoring off the request path, and the canary's stable routing.

While the ``staging`` alias names a version other than production's, every served prediction is also scored
by the model that did not answer (the challenger in shadow; the champion when a canary request was answered by
the challenger), and both go into the same prediction-log row (``shadow_*`` columns,
:mod:`housing.store.tables`). The request handler never waits for it: it hands the served rows to
:class:`ShadowScorer` and answers. The scorer's thread wakes every ``interval`` seconds, scores everything
handed over since with one predict call per model, and appends the rows to the prediction log. A shadow model
that fails or is gone costs nothing but its column: the rows are logged without it and the failure is counted.
When the scorer is behind (its backlog is full), the handler logs directly, without the shadow prediction, so
a slow challenger can never stall serving or grow memory without bound.

:func:`routes_to_challenger` is the canary's choice: a stable hash of the routing key (the client's
``X-Routing-Key``, else the request id), so the same key always gets the same model.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from housing.serving.model_service import LoadedModel
from housing.serving.prometheus import Metrics
from housing.store.prediction_log import LogUnavailable, PredictionLog
from housing.store.tables import prediction_rows

logger = logging.getLogger(__name__)

BUCKETS = 10_000
"""Canary routing resolution: the share is applied in steps of 0.01 %."""


def routing_bucket(key: bytes) -> int:
    """The key's stable bucket in [0, BUCKETS): the same key, the same bucket, in every process and
    release."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % BUCKETS


def routes_to_challenger(key: bytes, percent: float) -> bool:
    """Whether a request with routing ``key`` goes to the challenger when ``percent`` % of traffic does."""
    return percent > 0 and routing_bucket(key) < round(percent * BUCKETS / 100)


@dataclass(frozen=True)
class ServedBatch:
    """Predictions already sent to a client, waiting for their shadow prediction and their log rows."""

    request_ids: list[str]
    features: np.ndarray
    values: list[float]
    model: LoadedModel
    served_alias: str
    latency_ms: float
    created_at: Any
    client: str | None = None
    """Who asked (the log's ``client`` column; the backlog is shared fairly between clients)."""
    lows: list[float] | None = None
    highs: list[float] | None = None
    """The ranges served with the predictions (None: the version has no interval)."""


class ShadowScorer:
    """Scores served rows with the other model in a thread of its own, and logs them with both predictions.

    ``other_model(served_alias)`` names the model that did not answer (None: there is none any more).
    ``max_rows`` bounds the backlog, shared fairly between clients: while it is full, a client holding less
    than its fair share (``max_rows`` over the clients waiting) gets room by sending the rows of the client
    holding the most to the log without their shadow prediction; a client past its share is refused, and the
    caller logs its rows without shadow. A flood from one client therefore never starves the others of their
    paired evidence.
    """

    def __init__(
        self,
        log: PredictionLog,
        metrics: Metrics,
        other_model: Callable[[str], LoadedModel | None],
        *,
        interval: float = 0.02,
        max_rows: int = 20_000,
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.other_model = other_model
        self.interval = interval
        self.max_rows = max_rows
        self._queue: list[ServedBatch] = []
        self._ready: list[
            tuple[Any, ...]
        ] = []  # scored rows the log refused (it was full): appended first next time
        self._rows = 0  # rows in the queue and in _ready
        self._by_client: dict[str | None, int] = {}  # rows in the queue, per client
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0

    def submit(self, batch: ServedBatch) -> bool:
        """Hand over served rows; False (nothing taken) when the backlog is full and this client holds its
        fair share of it already."""
        rows = len(batch.request_ids)
        with self._lock:
            evicted: list[ServedBatch] = []
            if self._rows + rows > self.max_rows:
                holding = self._by_client.get(batch.client, 0)
                waiting = len(self._by_client) + (batch.client not in self._by_client)
                if holding + rows > self.max_rows // waiting:
                    return False
                evicted = self._evict(self._rows + rows - self.max_rows, batch.client)
                if self._rows + rows > self.max_rows:
                    self._queue += evicted  # nothing to make room with: put back, refuse this one
                    self._count(evicted, +1)
                    return False
            self._queue.append(batch)
            self._count([batch], +1)
        if evicted:
            self._log_without_shadow(evicted)
        return True

    def _count(self, batches: list[ServedBatch], sign: int) -> None:
        for batch in batches:
            rows = sign * len(batch.request_ids)
            self._rows += rows
            left = self._by_client.get(batch.client, 0) + rows
            if left:
                self._by_client[batch.client] = left
            else:
                self._by_client.pop(batch.client, None)

    def _evict(self, needed: int, newcomer: str | None) -> list[ServedBatch]:
        """Take at least ``needed`` rows out of the queue, newest first, from the client holding the most
        (never ``newcomer``); the batches taken (caller holds the lock)."""
        holders = [client for client in self._by_client if client != newcomer]
        if not holders:
            return []
        hog = max(holders, key=lambda client: self._by_client[client])
        taken: list[ServedBatch] = []
        freed = 0
        for batch in reversed(self._queue):
            if freed >= needed:
                break
            if batch.client == hog:
                taken.append(batch)
                freed += len(batch.request_ids)
        if taken:
            ids = {id(batch) for batch in taken}
            self._queue = [batch for batch in self._queue if id(batch) not in ids]
            self._count(taken, -1)
        return taken

    def _log_without_shadow(self, batches: list[ServedBatch]) -> None:
        """Log batches that gave up their place in the backlog, without the shadow prediction."""
        rows = [row for batch in batches for row in _rows_of(batch, None, None)]
        self.metrics.shadow_failures.labels("backlog").inc(len(rows))
        try:
            self.log.append(rows)
        except LogUnavailable:
            with self._lock:
                self._ready += rows
                self._rows += len(rows)

    @property
    def backlog_rows(self) -> int:
        return self._rows

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and hand every waiting row to the log (called on shutdown, before the log
        closes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.drain()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.drain()
            except Exception:  # the thread must outlive any one bad batch
                logger.exception("shadow scorer: a drain failed")

    def drain(self) -> int:
        """Score and log everything handed over so far; the rows appended to the log."""
        with self._drain_lock:
            with self._lock:
                batches, self._queue = self._queue, []
                self._by_client = {}
            rows = self._ready + [row for group in _grouped(batches) for row in self._score(group)]
            try:
                self.log.append(rows)
            except LogUnavailable:
                self._ready = rows  # kept (and counted in the backlog): the log takes them back when it can
                return 0
            self._ready = []
            with self._lock:
                self._rows -= len(rows)
            return len(rows)

    def _score(self, group: list[ServedBatch]) -> list[tuple[Any, ...]]:
        """Log rows of batches answered by the same model, with the other model's predictions when it
        works."""
        served = group[0]
        other = self.other_model(served.served_alias)
        features = np.vstack([batch.features for batch in group])
        shadow: np.ndarray | None = None
        if other is not None:
            started = time.perf_counter()
            try:
                shadow = np.asarray(other.predict(features), dtype=np.float64)
                if shadow.shape != (len(features),):
                    raise ValueError(
                        f"the shadow model returned shape {shadow.shape} for {len(features)} rows"
                    )
            # a failing challenger is counted and logged, never seen by a client
            except Exception as error:  # noqa: BLE001
                self.metrics.shadow_failures.labels("error").inc(len(features))
                self._warn(
                    f"version {other.version} failed to score {len(features)} row(s) in shadow:"
                    f" {type(error).__name__}: {error}"
                )
                shadow = None
            else:
                answers = np.concatenate([np.asarray(batch.values, dtype=np.float64) for batch in group])
                self.metrics.observe_shadow(answers, shadow, time.perf_counter() - started)
        rows: list[tuple[Any, ...]] = []
        offset = 0
        for batch in group:
            count = len(batch.request_ids)
            values = None if shadow is None else shadow[offset : offset + count].tolist()
            offset += count
            rows += _rows_of(batch, values, None if shadow is None or other is None else other.version)
        return rows

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60:
            logger.warning(
                "shadow scorer: %s (logged without the shadow prediction; warned at most once a minute)",
                message,
            )
            self._last_warning = now


def _grouped(batches: list[ServedBatch]) -> list[list[ServedBatch]]:
    """The batches grouped by the model that answered them, in order of first appearance."""
    groups: dict[tuple[str, str], list[ServedBatch]] = {}
    for batch in batches:
        groups.setdefault((batch.served_alias, batch.model.version), []).append(batch)
    return list(groups.values())


def _rows_of(
    batch: ServedBatch, shadow: list[float] | None, shadow_version: str | None
) -> list[tuple[Any, ...]]:
    """The log rows of a served batch, with the other model's predictions when they were scored."""
    return prediction_rows(
        batch.request_ids,
        batch.features,
        batch.values,
        model_name=batch.model.name,
        model_version=batch.model.version,
        latency_ms=batch.latency_ms,
        created_at=batch.created_at,
        served_alias=batch.served_alias,
        shadow=shadow,
        shadow_version=shadow_version,
        client=batch.client,
        intervals=None if batch.lows is None or batch.highs is None else (batch.lows, batch.highs),
    )
