"""The prediction log's schema: its two tables, the engine every process opens it with, the row insert, and
the migration that keeps an existing log readable when columns are added.

``predictions`` holds one row per served prediction: the 8 features, the prediction and the version that
answered (``served_alias``: ``production``, or ``staging`` for a canary request), and, while a challenger is
loaded, the prediction of the model that did *not* answer (``shadow_prediction``, ``shadow_model_version``):
the challenger's in shadow, the champion's on a canary request, and the ``client`` that asked (its
``HOUSING_PREDICT_TOKENS`` name, else its address). These columns are nullable: rows logged before they
existed, and rows logged without a challenger, leave them empty. ``feedback`` holds the labels, each with
the labeller who sent it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    inspect,
    make_url,
    text,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable

from housing.errors import UserError, masked_first_line
from housing.schema import FEATURE_NAMES

logger = logging.getLogger(__name__)

CREATE_ATTEMPTS = 5
"""Tries of creating the tables while other processes may be creating them too."""

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
    *(
        Column(name, type_, nullable=True)
        for name, type_ in (
            ("served_alias", String(20)),
            ("shadow_prediction", Float()),
            ("shadow_model_version", String(20)),
            ("client", String(64)),
            ("interval_low", Float()),
            ("interval_high", Float()),
        )
    ),
)

feedback_table = Table(
    "feedback",
    metadata,
    Column("request_id", String(32), primary_key=True),
    Column("actual", Float, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("labeller", String(64), nullable=True),
)


ADDED_COLUMNS: tuple[str, ...] = (
    "served_alias",
    "shadow_prediction",
    "shadow_model_version",
    "client",
    "interval_low",
    "interval_high",
)
"""Columns added after the first release, in order: :func:`create_tables` adds them to an older log."""
FEEDBACK_ADDED_COLUMNS: tuple[str, ...] = ("labeller",)
"""Columns of ``feedback`` added after the first release."""
PREDICTION_COLUMNS: tuple[str, ...] = (
    "request_id",
    "created_at",
    *FEATURE_NAMES,
    "prediction",
    "model_name",
    "model_version",
    "latency_ms",
    *ADDED_COLUMNS,
)
"""Order of the values in a buffered prediction row (a tuple: cheap to build on the request path)."""


SUPPORTED_BACKENDS = ("sqlite", "postgresql")
"""Databases whose insert skips stored request ids (``ON CONFLICT DO NOTHING``): the only ones the log
accepts."""
SQLITE_BUSY_SECONDS = 30.0
"""How long SQLite waits for another process's write lock when no statement timeout is given."""


def make_engine(
    url: str, *, connect_timeout: float | None = None, statement_timeout: float | None = None
) -> Engine:
    """An engine for ``url``. SQLite gets WAL, synchronous=NORMAL, its folder created on connect, and a busy
    timeout (``statement_timeout``, else 30 s) for concurrent processes; PostgreSQL gets libpq's
    ``connect_timeout`` and a server-side ``statement_timeout`` when given. A thread never waits longer than
    ``connect_timeout`` for a pooled connection. Other databases are refused in one sentence: the insert that
    skips stored request ids (so that a retried or replayed batch never duplicates a row, nor blocks the log
    on its primary key) exists for these two only.
    """
    backend = make_url(url).get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise UserError(
            f"the prediction log supports SQLite and PostgreSQL URLs only (got a {backend!r} URL): set "
            "HOUSING_PREDICTION_LOG_URL to sqlite:///PATH or postgresql+psycopg://..."
        )
    pool_args: dict[str, Any] = {} if connect_timeout is None else {"pool_timeout": connect_timeout}
    if url.startswith("sqlite"):
        busy = SQLITE_BUSY_SECONDS if statement_timeout is None else statement_timeout
        engine = create_engine(url, connect_args={"timeout": busy, "check_same_thread": False}, **pool_args)
        database = make_url(url).database
        folder = Path(database).parent if database and database != ":memory:" else None

        @event.listens_for(engine, "do_connect")
        def _create_folder(*_: Any) -> None:  # on every connect: the folder may come back after an outage
            if folder is not None and database is not None:
                with contextlib.suppress(OSError):  # sqlite3 then fails with "unable to open database file"
                    folder.mkdir(parents=True, exist_ok=True)
                    if not os.path.exists(database):
                        # owner-only from its first byte: the log holds every request and label. Never opened
                        # once it exists: closing any descriptor of a file drops this process's SQLite locks
                        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        if connect_timeout is not None:
            connect_args["connect_timeout"] = max(
                2, math.ceil(connect_timeout)
            )  # libpq: whole seconds, at least 2
        if statement_timeout is not None:
            connect_args["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **pool_args)


@contextmanager
def opened_engine(url: str, **timeouts: float | None) -> Iterator[Engine]:
    """:func:`make_engine` for the length of a ``with`` block, its connections closed at the end."""
    engine = make_engine(url, **timeouts)
    try:
        yield engine
    finally:
        engine.dispose()


ROWS_PER_STATEMENT = 999 // len(PREDICTION_COLUMNS)
"""Rows one multi-row INSERT carries: as many as fit under SQLite's oldest limit of 999 parameters (49 rows
of 20 values)."""


def insert_statement(engine: Engine, rows: int = 1) -> str:
    """A driver-level INSERT of ``rows`` prediction rows that skips request ids already stored.

    Rows go to the DB-API's executemany as flat tuples (no per-row work in SQLAlchemy), ``rows`` rows per
    statement: the driver takes the GIL back once per statement, not once per row. Under load the event loop
    holds the GIL and a waiting thread gets it only at the next switch interval (5 ms), so a row-by-row
    executemany of one flush (about 1,000 rows) could last seconds, past the stall limit, sending rows to
    the spill file on the request path: the slowest requests' latency.
    """
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    columns = ", ".join(f'"{name}"' for name in PREDICTION_COLUMNS)
    placeholders = ", ".join([f"({', '.join([marker] * len(PREDICTION_COLUMNS))})"] * rows)
    return f"INSERT INTO predictions ({columns}) VALUES {placeholders} ON CONFLICT (request_id) DO NOTHING"


def timestamp_value(engine: Engine, moment: datetime) -> Any:
    """``moment`` as the driver stores it in the created_at column (SQLAlchemy's SQLite text format)."""
    if engine.dialect.name == "sqlite":
        return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", timespec="microseconds")
    return moment


def create_tables(engine: Engine) -> None:
    """Create the log's tables if they don't exist, and add the columns an older log lacks (safe to call from
    several processes at once: a column another process added meanwhile is fine)."""
    try:
        create_missing(engine, metadata.sorted_tables)
        add_missing_columns(engine)
        add_missing_columns(engine, feedback_table, FEEDBACK_ADDED_COLUMNS)
    except SQLAlchemyError as error:
        raise UserError(
            f"could not open the prediction log at {engine.url.render_as_string(hide_password=True)} "
            f"({masked_first_line(error, str(engine.url))})"
        ) from None


def create_missing(engine: Engine, tables: Sequence[Table]) -> None:
    """Create each of ``tables`` and its indexes unless it exists, one ``IF NOT EXISTS`` statement at a time,
    so there is no window between a check and the creation for another process to create it in.

    Safe when several processes create the same tables at once: SQLite serialises the statements (a racing
    writer waits for the busy timeout, or is told the database is locked when its snapshot went stale, and
    tries again); PostgreSQL may report that a concurrent CREATE of the same table won (its row type's unique
    index), and the statement is tried again, then finds the table. Any other error is raised."""
    missing = [table for table in tables if not inspect(engine).has_table(table.name)]
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with engine.begin() as connection:
                for table in missing:  # none: nothing to create, so a role without CREATE can use the log
                    connection.execute(CreateTable(table, if_not_exists=True))
                    for index in table.indexes:
                        connection.execute(CreateIndex(index, if_not_exists=True))
            return
        except SQLAlchemyError as error:
            if attempt == CREATE_ATTEMPTS or not lost_a_create_race(error):
                raise
            time.sleep(0.05 * attempt)  # until the other process's CREATE is committed and visible


def lost_a_create_race(error: Exception) -> bool:
    """Whether a CREATE failed because another process was creating the same object (not an outage): it
    created it first, or, on SQLite, held the write lock."""
    message = str(error)
    return isinstance(error, IntegrityError) or "already exists" in message or "database is locked" in message


def add_missing_columns(
    engine: Engine, table: Table = predictions_table, columns: Sequence[str] = ADDED_COLUMNS
) -> list[str]:
    """``ALTER TABLE <table> ADD COLUMN`` each of ``columns`` it lacks (nullable: the old rows keep NULL);
    returns the columns added."""
    present = {column["name"] for column in inspect(engine).get_columns(table.name)}
    added = []
    for name in columns:
        if name in present:
            continue
        column_type = table.c[name].type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as connection:
                connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{name}" {column_type}'))
        except SQLAlchemyError:
            if name not in {column["name"] for column in inspect(engine).get_columns(table.name)}:
                raise
            continue  # another process added it first
        added.append(name)
    if added:
        logger.info("prediction log: added column(s) %s to an older %s table", ", ".join(added), table.name)
    return added


def prediction_rows(
    request_ids: Sequence[str],
    features: Any,
    predictions: Sequence[float],
    *,
    model_name: str,
    model_version: str,
    latency_ms: float,
    created_at: Any,
    served_alias: str = "production",
    shadow: Sequence[float | None] | None = None,
    shadow_version: str | None = None,
    client: str | None = None,
    intervals: tuple[Sequence[float], Sequence[float]] | None = None,
) -> list[tuple[Any, ...]]:
    """Log rows for a batch of predictions (``features``: an (n, 8) array in contract order), in
    :data:`PREDICTION_COLUMNS` order; ``shadow``: the other model's predictions, when one was scored;
    ``client``: who asked; ``intervals``: the ranges served, (lows, highs)."""
    lows, highs = intervals if intervals is not None else ([None] * len(request_ids),) * 2
    if shadow is None:
        return [
            (
                request_id,
                created_at,
                *values,
                prediction,
                model_name,
                model_version,
                latency_ms,
                served_alias,
                None,
                None,
                client,
                low,
                high,
            )
            for request_id, values, prediction, low, high in zip(
                request_ids, features.tolist(), predictions, lows, highs, strict=True
            )
        ]
    return [
        (
            request_id,
            created_at,
            *values,
            prediction,
            model_name,
            model_version,
            latency_ms,
            served_alias,
            other,
            shadow_version,
            client,
            low,
            high,
        )
        for request_id, values, prediction, other, low, high in zip(
            request_ids, features.tolist(), predictions, shadow, lows, highs, strict=True
        )
    ]
