"""The prediction log: every served prediction and every feedback label, durably in an SQL database.

SQLite in WAL mode by default, PostgreSQL by setting (for teams; other databases are refused: see
make_engine). The API never writes to the database on a request's critical path: rows wait in a capped buffer
(housing.store.spill: in memory, or on local disk past the cap and while the database is failing) that a
writer thread flushes in batches, one transaction per batch. A kill -9 loses at most the rows of the last
flush interval and of the flush then in progress; a graceful shutdown writes everything (or leaves it on disk
for the next start). Inserts skip request ids already stored, so a batch retried or replayed twice never
duplicates a row. Database calls have connect and statement timeouts: an outage becomes an error within
seconds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from housing.config.settings import Settings
from housing.errors import UserError, masked_first_line
from housing.store.dead_letters import DeadLetters
from housing.store.disk_floor import DiskFloor
from housing.store.spill import SpillingBuffer
from housing.store.spill_file import row_restorer
from housing.store.tables import (
    PREDICTION_COLUMNS,
    ROWS_PER_STATEMENT,
    create_tables,
    feedback_table,
    insert_statement,
    make_engine,
    predictions_table,
    timestamp_value,
)

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
"""Longest pause between attempts to reach a database that is down."""


REPLAY_ROWS_PER_FLUSH = 20_000
"""Most spilled rows one flush replays: while rows keep arriving as fast as they are replayed, the writer
still gets back to its own work (the spill's fsync) between flushes."""


class LogUnavailable(Exception):
    """The prediction log can take no more rows: its database is unreachable, the memory buffer is full and
    the spill file cannot be written. The API answers 503 with this sentence and Retry-After, rather than lose
    rows silently.
    """

    retry_after = math.ceil(MAX_BACKOFF_SECONDS)  # seconds: the writer's longest pause between attempts


class FeedbackResult:
    """Outcomes of recording a label."""

    CREATED = "created"
    UNCHANGED = "unchanged"
    PENDING = (  # in this process's buffer, not yet in the database: ask again shortly (the writer was woken)
        "pending"
    )
    UNKNOWN_REQUEST = "unknown_request"
    CONFLICT = "conflict"


@dataclass
class LogStatus:
    """Health of the writer, for /ready and /metrics."""

    pending_rows: int  # not yet in the database: in memory, in flight, or in this process's spill file
    written_rows: int
    failed_flushes: int
    last_error: str | None
    spilled_rows: int = 0  # of the pending rows, those in the spill file
    spill_error: str | None = None
    dead_letter_rows: int = 0  # rows the database refused for good, in the dead-letter file


class PredictionLog:
    """Buffered, batched writer of prediction rows, spilling to disk when needed, plus synchronous feedback
    writes.

    ``max_buffer_rows`` caps the memory buffer, ``spill_dir`` is where rows wait on disk (None: no cap / no
    spill); ``connect_timeout`` and ``statement_timeout`` bound every database call. The API uses
    :meth:`from_settings`.
    """

    def __init__(
        self,
        url: str,
        *,
        flush_interval: float = 0.2,
        max_batch_rows: int = 5_000,
        max_buffer_rows: int | None = None,
        spill_dir: Path | None = None,
        connect_timeout: float | None = None,
        statement_timeout: float | None = None,
        min_free_mb: float = 0.0,
        dead_letter_tries: int = 5,
    ) -> None:
        self.url = url
        self.flush_interval = flush_interval
        self.max_batch_rows = max_batch_rows
        self.engine = make_engine(url, connect_timeout=connect_timeout, statement_timeout=statement_timeout)
        self.pending = SpillingBuffer(
            max_rows=max_buffer_rows,
            spill_dir=spill_dir,
            stall_seconds=2 * flush_interval,
            database=self.engine.url.render_as_string(hide_password=True),
        )
        self._restore = row_restorer(self.engine.dialect.name, len(PREDICTION_COLUMNS))
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._insert = insert_statement(self.engine)
        self._insert_many = insert_statement(self.engine, ROWS_PER_STATEMENT)
        self._tables_ready = False
        self.written_rows = self.failed_flushes = 0
        self.last_error: str | None = None
        self.disk = DiskFloor(self._disk_folders(spill_dir), min_free_mb)
        self.dead_letters = DeadLetters(
            spill_dir, dead_letter_tries, self.pending.prefix.replace("prediction_log", "dead-letters", 1)
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> PredictionLog:
        """The API's log: URL, flush interval, buffer cap, spill folder and database timeouts from
        ``settings``."""
        return cls(
            settings.log_database_url,
            flush_interval=settings.log_flush_interval,
            max_buffer_rows=settings.log_buffer_max_rows,
            spill_dir=settings.spill_dir,
            connect_timeout=settings.db_connect_timeout,
            statement_timeout=settings.db_statement_timeout,
            min_free_mb=settings.log_min_free_mb,
            dead_letter_tries=settings.log_dead_letter_tries,
        )

    def _disk_folders(self, spill_dir: Path | None) -> list[Path]:
        """The folders the log writes to on this machine: the spill folder, and a SQLite database's."""
        folders = [] if spill_dir is None else [spill_dir]
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if database and database != ":memory:":
            folders.append(Path(database).parent)
        return folders

    def disk_refusal(self) -> str | None:
        """Why no prediction may be served now (the log's disk is below its free-space floor), or None."""
        return self.disk.refusal()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the tables (retried by the writer if the database is down) and start the writer thread."""
        try:
            self._ensure_tables()
        except UserError as error:
            self.last_error = str(error)
            logger.warning("prediction log: %s; will retry", error)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the writer and write every pending row (called on graceful shutdown); rows the database does
        not take in time stay in the spill file, which the next start replays."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while True:  # at least one flush, whatever the timeout
            written = self.flush()
            if (written and not self.pending.spilling) or (not written and not self.pending.memory_rows):
                break  # everything is in the database, or what is not is safe in the spill file
            if time.monotonic() >= deadline:
                break
            if not written:
                time.sleep(0.2)
        if self.pending.memory_rows:
            logger.error(
                "prediction log: %d row(s) could not be written or spilled before shutdown (%s; %s)",
                self.pending.memory_rows,
                self.last_error,
                self.pending.error,
            )
        if self.pending.spill is not None:
            self.pending.spill.close()
        self.engine.dispose()

    # --- writes ------------------------------------------------------------------------------------
    def timestamp(self, moment: datetime) -> Any:
        """The created_at value of rows logged at ``moment``."""
        return timestamp_value(self.engine, moment)

    def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Queue rows (tuples in PREDICTION_COLUMNS order) for the writer; never touches the database.

        While the database is failing, or the buffer is full, the rows go to the spill file; if that cannot be
        written they stay in memory up to the cap, past which :class:`LogUnavailable` is raised (nothing
        queued)."""
        if not self.pending.append(rows):
            raise LogUnavailable(
                "the prediction log cannot take more rows: its database is unreachable or stalled"
                f" ({self.last_error or 'a write is hanging'}), its memory buffer is full"
                f" ({self.pending.max_rows:,} rows) and its spill file cannot be written"
                f" ({self.pending.error})"
            )
        if self.pending.memory_rows >= self.max_batch_rows:
            self._wake.set()

    @property
    def pending_rows(self) -> int:
        return self.pending.pending_rows

    def _ensure_tables(self) -> None:
        if not self._tables_ready:
            create_tables(self.engine)
            self._tables_ready = True

    def flush(self) -> bool:
        """Write everything pending: the spill's backlog, in order, then the memory buffer; then, every few
        seconds, the spill files of processes that are gone. On failure the buffer moves to the spill (or
        stays in memory when the spill cannot be written) for the next attempt, and False is returned."""
        with self._flush_lock:
            self.pending.busy_since = time.monotonic()
            try:
                self._ensure_tables()
                self.written_rows += self.pending.replay(
                    self._insert_spilled, self.max_batch_rows, REPLAY_ROWS_PER_FLUSH
                )
                self._flush_buffer()
                self.written_rows += self.pending.replay_orphans(self._insert_spilled, self.max_batch_rows)
            except (UserError, SQLAlchemyError) as error:
                self.failed_flushes += 1
                self.last_error = masked_first_line(error, self.url)
                logger.warning("prediction log: write failed, will retry (%s)", self.last_error)
                self.pending.divert_memory()
                return False
            finally:
                self.pending.busy_since = None
            self.last_error = None
            return True

    def _insert_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """One transaction: full groups of ROWS_PER_STATEMENT rows as multi-row statements, the rest row by
        row."""
        grouped = len(rows) - len(rows) % ROWS_PER_STATEMENT
        step = max(ROWS_PER_STATEMENT, self.max_batch_rows - self.max_batch_rows % ROWS_PER_STATEMENT)
        with self.engine.begin() as connection:
            for start in range(0, grouped, step):
                stop = min(start + step, grouped)
                connection.exec_driver_sql(
                    self._insert_many,
                    [
                        tuple(chain.from_iterable(rows[group : group + ROWS_PER_STATEMENT]))
                        for group in range(start, stop, ROWS_PER_STATEMENT)
                    ],
                )
            if grouped < len(rows):
                connection.exec_driver_sql(self._insert, list(rows[grouped:]))

    def _insert_refusing_poison(self, rows: Sequence[Sequence[Any]]) -> None:
        """:meth:`_insert_rows`; when the database refuses the batch for a row's content (not an outage),
        the rows one at a time: the good ones go in, each refused one counts a failure and goes to the
        dead-letter file at its last try. Raises while refused rows are left to try again."""
        try:
            self._insert_rows(rows)
            return
        except (IntegrityError, DataError) as error:
            logger.warning(
                "prediction log: the database refused a batch (%s); inserting row by row",
                masked_first_line(error, self.url),
            )
        refused, reasons = [], []
        for row in rows:
            try:
                self._insert_rows([row])
            except (IntegrityError, DataError) as error:
                refused.append(row)
                reasons.append(masked_first_line(error, self.url, limit=200))
        dead = self.dead_letters.refused(refused, reasons)
        if len(dead) < len(refused):
            raise UserError(
                f"the database refused {len(refused) - len(dead)} row(s) ({reasons[0]}); tried again later"
            )

    def _insert_spilled(self, rows: list[list[Any]]) -> None:
        self._insert_refusing_poison([self._restore(row) for row in rows])

    def _flush_buffer(self) -> None:
        batch = self.pending.take_batch()
        if not batch:
            return
        try:
            self._insert_refusing_poison(batch)
        except (UserError, SQLAlchemyError):
            self.pending.batch_failed(batch)
            raise
        self.pending.batch_written(batch)
        self.written_rows += len(batch)

    def _run(self) -> None:
        backoff, next_attempt = self.flush_interval, 0.0
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if (
                self.last_error is not None or self.pending.spilling
            ):  # once per interval: rows durable on disk
                self.pending.divert_memory()
                self.pending.sync()
            if time.monotonic() < next_attempt:
                continue
            ok = self.flush()
            backoff = self.flush_interval if ok else min(backoff * 2, MAX_BACKOFF_SECONDS)
            next_attempt = 0.0 if ok else time.monotonic() + backoff
        self.pending.sync()

    def status(self) -> LogStatus:
        return LogStatus(
            self.pending_rows,
            self.written_rows,
            self.failed_flushes,
            self.last_error,
            self.pending.spilled_rows,
            self.pending.error,
            self.dead_letters.rows,
        )

    # --- feedback ----------------------------------------------------------------------------------
    def record_feedback(self, request_id: str, actual: float, labeller: str | None = None) -> str:
        """Store the true value of a logged prediction; see :class:`FeedbackResult` for the outcomes. Never
        waits.

        The same label twice is accepted (idempotent retry, also when both arrive at once); a different label
        for an id that already has one is a conflict. An id still in this process's buffer is PENDING (the
        writer is woken); an id the database does not hold is UNKNOWN_REQUEST: another worker process may not
        have flushed it yet, so callers ask again after a flush interval, without holding a thread."""
        if self.pending.contains(request_id):
            self._wake.set()
            return FeedbackResult.PENDING
        if not self._is_logged(request_id):
            return FeedbackResult.UNKNOWN_REQUEST
        stored = self._stored_label(request_id)
        if stored is None:
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        feedback_table.insert(),
                        {
                            "request_id": request_id,
                            "actual": actual,
                            "received_at": datetime.now(UTC),
                            "labeller": labeller,
                        },
                    )
                return FeedbackResult.CREATED
            except IntegrityError:  # a concurrent request stored a label first: compare with it
                stored = self._stored_label(request_id)
                if stored is None:
                    raise
        return FeedbackResult.UNCHANGED if stored == actual else FeedbackResult.CONFLICT

    def _stored_label(self, request_id: str) -> float | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(feedback_table.c.actual).where(feedback_table.c.request_id == request_id)
            ).scalar_one_or_none()

    def _is_logged(self, request_id: str) -> bool:
        with self.engine.connect() as connection:
            query = select(predictions_table.c.request_id).where(predictions_table.c.request_id == request_id)
            return connection.execute(query).first() is not None
