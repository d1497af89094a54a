"""The prediction log: every served prediction and every feedback label, durably in an SQL database.

SQLite in WAL mode by default, any SQLAlchemy URL by setting (PostgreSQL for teams). The API never writes
on a request's critical path: rows go to an in-memory buffer that a writer thread flushes in batches, in
one transaction per batch. A crash loses at most the rows not yet flushed (one flush interval) and never
corrupts the store; a graceful shutdown flushes everything. Inserts ignore request ids already stored,
so a batch retried after an unclear failure never duplicates a row. Feedback labels join on request_id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    make_url,
    select,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from housing.errors import UserError, first_line
from housing.schema import FEATURE_NAMES, TARGET

logger = logging.getLogger(__name__)

metadata = MetaData()

predictions_table = Table(
    "predictions",
    metadata,
    Column("request_id", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    *(Column(name, Float, nullable=False) for name in FEATURE_NAMES),
    Column("prediction", Float, nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("model_version", String(20), nullable=False),
    Column("latency_ms", Float, nullable=False),
)

feedback_table = Table(
    "feedback",
    metadata,
    Column("request_id", String(32), primary_key=True),
    Column("actual", Float, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


PREDICTION_COLUMNS: tuple[str, ...] = (
    "request_id", "created_at", *FEATURE_NAMES, "prediction", "model_name", "model_version", "latency_ms",
)
"""Order of the values in a buffered prediction row (a tuple: cheap to build on the request path)."""


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, synchronous=NORMAL and a busy timeout for concurrent processes."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _insert_statement(engine: Engine) -> str:
    """A driver-level INSERT of one prediction row that skips request ids already stored.

    Rows go to the DB-API's executemany as tuples (no per-row work in SQLAlchemy), which keeps the
    writer thread's share of the GIL small while the API serves thousands of requests a second.
    """
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    columns = ", ".join(f'"{name}"' for name in PREDICTION_COLUMNS)
    placeholders = ", ".join([marker] * len(PREDICTION_COLUMNS))
    conflict = " ON CONFLICT (request_id) DO NOTHING" if engine.dialect.name in ("sqlite", "postgresql") else ""
    return f"INSERT INTO predictions ({columns}) VALUES ({placeholders}){conflict}"


def timestamp_value(engine: Engine, moment: datetime) -> Any:
    """``moment`` as the driver stores it in the created_at column (SQLAlchemy's SQLite text format)."""
    if engine.dialect.name == "sqlite":
        return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", timespec="microseconds")
    return moment


def create_tables(engine: Engine) -> None:
    """Create the log's tables if they don't exist (safe to call from several processes)."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except IntegrityError:  # another process created them at the same moment
        pass
    except SQLAlchemyError as error:
        raise UserError(f"could not open the prediction log at {engine.url.render_as_string(hide_password=True)} "
                        f"({first_line(error)})") from None


class FeedbackResult:
    """Outcomes of recording a label."""

    CREATED = "created"
    UNCHANGED = "unchanged"
    UNKNOWN_REQUEST = "unknown_request"
    CONFLICT = "conflict"


@dataclass
class LogStatus:
    """Health of the writer, for /ready and /metrics."""

    pending_rows: int
    written_rows: int
    failed_flushes: int
    last_error: str | None


class PredictionLog:
    """Buffered, batched writer of prediction rows plus synchronous feedback writes."""

    def __init__(self, url: str, *, flush_interval: float = 0.2, max_batch_rows: int = 5_000) -> None:
        self.url = url
        self.flush_interval = flush_interval
        self.max_batch_rows = max_batch_rows
        self.engine = make_engine(url)
        self._buffer: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._insert = _insert_statement(self.engine)
        self._tables_ready = False
        self.written_rows = 0
        self.failed_flushes = 0
        self.last_error: str | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the tables (retried by the writer if the database is down) and start the writer thread."""
        self._ensure_tables()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the writer and flush every buffered row (called on graceful shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self.pending_rows and time.monotonic() < deadline:
            if not self.flush():
                time.sleep(0.2)
        if self.pending_rows:
            logger.error("prediction log: %d row(s) could not be written before shutdown (%s)", self.pending_rows, self.last_error)
        self.engine.dispose()

    # --- writes ------------------------------------------------------------------------------------
    def timestamp(self, moment: datetime) -> Any:
        """The created_at value of rows logged at ``moment``."""
        return timestamp_value(self.engine, moment)

    def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Queue rows (tuples in PREDICTION_COLUMNS order) for the writer; never touches the database."""
        with self._lock:
            self._buffer.extend(rows)
            size = len(self._buffer)
        if size >= self.max_batch_rows:
            self._wake.set()

    @property
    def pending_rows(self) -> int:
        return len(self._buffer)

    def _ensure_tables(self) -> bool:
        if self._tables_ready:
            return True
        try:
            create_tables(self.engine)
        except UserError as error:
            self.last_error = str(error)
            logger.warning("prediction log: %s; will retry", error)
            return False
        self._tables_ready = True
        return True

    def flush(self) -> bool:
        """Write everything buffered so far; on failure keep it buffered for the next attempt."""
        if not self._ensure_tables():
            self.failed_flushes += 1
            return False
        with self._flush_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return True
            try:
                with self.engine.begin() as connection:
                    for start in range(0, len(batch), self.max_batch_rows):
                        connection.exec_driver_sql(self._insert, batch[start : start + self.max_batch_rows])
            except SQLAlchemyError as error:
                with self._lock:
                    self._buffer[:0] = batch
                self.failed_flushes += 1
                self.last_error = first_line(error)
                logger.warning("prediction log: flush of %d row(s) failed, will retry (%s)", len(batch), self.last_error)
                return False
            self.written_rows += len(batch)
            self.last_error = None
            return True

    def _run(self) -> None:
        backoff = self.flush_interval
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            ok = self.flush()
            backoff = self.flush_interval if ok else min(backoff * 2, 5.0)

    def status(self) -> LogStatus:
        return LogStatus(self.pending_rows, self.written_rows, self.failed_flushes, self.last_error)

    # --- feedback ----------------------------------------------------------------------------------
    def record_feedback(self, request_id: str, actual: float) -> str:
        """Store the true value of a logged prediction; see :class:`FeedbackResult` for the outcomes.

        The same label twice is accepted (idempotent retry); a different label for an id that already has
        one is a conflict. Buffered predictions are flushed first (waiting for a flush in progress), and an
        id still unknown is looked up once more after two flush intervals, in case another worker process
        of the API logged it and has not flushed yet.
        """
        with self._lock:
            buffered = any(row[0] == request_id for row in self._buffer)
        if buffered:
            self.flush()
        else:
            with self._flush_lock:  # a flush in progress may be committing the row: wait for it
                pass
        if not self._is_logged(request_id):
            time.sleep(2 * self.flush_interval)
            self.flush()
            if not self._is_logged(request_id):
                return FeedbackResult.UNKNOWN_REQUEST
        with self.engine.begin() as connection:
            existing = connection.execute(
                select(feedback_table.c.actual).where(feedback_table.c.request_id == request_id)
            ).first()
            if existing is not None:
                return FeedbackResult.UNCHANGED if existing.actual == actual else FeedbackResult.CONFLICT
            try:
                connection.execute(
                    feedback_table.insert(), {"request_id": request_id, "actual": actual, "received_at": datetime.now(UTC)}
                )
            except IntegrityError:  # a concurrent request stored a label first
                return FeedbackResult.CONFLICT
        return FeedbackResult.CREATED

    def _is_logged(self, request_id: str) -> bool:
        with self.engine.connect() as connection:
            found = connection.execute(
                select(predictions_table.c.request_id).where(predictions_table.c.request_id == request_id)
            ).first()
        return found is not None


def read_window(engine: Engine, *, last_n: int | None = None, since: datetime | None = None,
                model_version: str | None = None) -> pd.DataFrame:
    """The most recent logged predictions (newest ``last_n`` rows and/or rows since ``since``; only those
    ``model_version`` served, when given), oldest first, with their feedback label in ``MedHouseVal`` (NaN
    when none has arrived)."""
    joined = predictions_table.outerjoin(feedback_table, predictions_table.c.request_id == feedback_table.c.request_id)
    query = select(
        predictions_table.c.request_id,
        predictions_table.c.created_at,
        *(predictions_table.c[name] for name in FEATURE_NAMES),
        predictions_table.c.prediction,
        predictions_table.c.model_version,
        feedback_table.c.actual.label(TARGET.name),
    ).select_from(joined)
    if since is not None:
        query = query.where(predictions_table.c.created_at >= since)
    if model_version is not None:
        query = query.where(predictions_table.c.model_version == model_version)
    query = query.order_by(predictions_table.c.created_at.desc())  # the indexed column only: no sort of the table
    if last_n is not None:
        query = query.limit(last_n)
    with engine.connect() as connection:
        result = connection.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    if frame.empty:
        return pd.DataFrame(columns=["request_id", "created_at", *FEATURE_NAMES, "prediction", "model_version", TARGET.name])
    frame[TARGET.name] = frame[TARGET.name].astype(float)
    return frame.iloc[::-1].reset_index(drop=True)


def count_rows(url: str) -> tuple[int, int]:
    """Number of logged predictions and of feedback labels in the prediction log at ``url``."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            predictions = connection.execute(select(func.count()).select_from(predictions_table)).scalar_one()
            labels = connection.execute(select(func.count()).select_from(feedback_table)).scalar_one()
    finally:
        engine.dispose()
    return int(predictions), int(labels)


def prediction_rows(
    request_ids: Sequence[str],
    features: Any,
    predictions: Sequence[float],
    *,
    model_name: str,
    model_version: str,
    latency_ms: float,
    created_at: Any,
) -> list[tuple[Any, ...]]:
    """Log rows for a batch of predictions (``features``: an (n, 8) array in contract order)."""
    return [
        (request_id, created_at, *values, prediction, model_name, model_version, latency_ms)
        for request_id, values, prediction in zip(request_ids, features.tolist(), predictions, strict=True)
    ]
