"""Lease locks in the prediction-log database: one retrain or promotion at a time, across processes and
machines.

A lock is a row of the ``locks`` table (name, owner, acquired_at, expires_at) in the prediction log's
database (SQLite file or PostgreSQL), so every process that can reach that database sees it. Taking a
lock deletes an expired lease of that name, then INSERTs a row: the primary key lets exactly one
INSERT win, in one transaction, on both backends. A holder that dies frees the lock when its lease
expires; a live holder releases it (only its own lease: the owner and acquisition time must match) or
renews it. Times come from the database's clock on PostgreSQL (one clock for every machine) and from
this machine's clock on SQLite (a local file).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from housing.errors import UserError, first_line
from housing.store.tables import create_missing, make_engine

logger = logging.getLogger(__name__)

RETRAIN_LOCK = "retrain"
"""The lock every retrain, promotion and rollback holds while it may move the production alias."""

metadata = MetaData()

locks_table = Table(
    "locks",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("owner", String(500), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Lock:
    """A lease held on a named lock."""

    name: str
    owner: str
    acquired_at: datetime
    expires_at: datetime


def current_owner() -> str:
    """``hostname:pid:command`` of this process (the script's name only: its arguments may hold secrets)."""
    command = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return f"{socket.gethostname()}:{os.getpid()}:{command or 'python'}"


def create_table(engine: Engine, table: Table) -> None:
    """Create ``table`` if it does not exist; safe when several processes create it at the same moment."""
    try:
        create_missing(engine, [table])
    except SQLAlchemyError as error:
        where = engine.url.render_as_string(hide_password=True)
        raise UserError(f"could not create table {table.name} in {where} ({first_line(error)})") from None


def create_lock_table(engine: Engine) -> None:
    """Create the ``locks`` table if it does not exist."""
    create_table(engine, locks_table)


def database_now(connection: Connection) -> datetime:
    """The time leases are measured in: the database's clock on PostgreSQL, this machine's on SQLite (UTC)."""
    if connection.dialect.name == "postgresql":
        return aware(connection.execute(select(func.clock_timestamp())).scalar_one())
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """``moment`` in UTC with its time zone (SQLite hands back naive UTC datetimes)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def acquire_lock(engine: Engine, name: str, *, owner: str, lease_seconds: float) -> Lock | None:
    """Take the lock ``name`` for ``lease_seconds``; None when another owner holds an unexpired lease of it.

    In one transaction: delete an expired lease, then INSERT. Of processes racing for the same lock exactly
    one INSERT succeeds; the others hit the primary key (IntegrityError) and get None.
    """
    create_lock_table(engine)
    try:
        with engine.begin() as connection:
            now = database_now(connection)
            connection.execute(
                delete(locks_table).where(locks_table.c.name == name, locks_table.c.expires_at <= now)
            )
            lock = Lock(name, owner, now, now + timedelta(seconds=lease_seconds))
            connection.execute(
                insert(locks_table).values(
                    name=name, owner=owner, acquired_at=lock.acquired_at, expires_at=lock.expires_at
                )
            )
    except IntegrityError:
        return None
    logger.info("lock %r taken by %s until %s", name, owner, f"{lock.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    return lock


def _is_lease(lock: Lock) -> ColumnElement[bool]:
    """The row of exactly this lease (owner and acquisition time match)."""
    return (
        (locks_table.c.name == lock.name)
        & (locks_table.c.owner == lock.owner)
        & (locks_table.c.acquired_at == lock.acquired_at)
    )


def release_lock(engine: Engine, lock: Lock) -> bool:
    """Release ``lock`` if it is still this lease (same owner, same acquisition); False when it was lost."""
    with engine.begin() as connection:
        deleted = connection.execute(delete(locks_table).where(_is_lease(lock))).rowcount
    if not deleted:
        logger.warning(
            "lock %r was no longer held by %s (its lease expired and another process took it)",
            lock.name,
            lock.owner,
        )
    return bool(deleted)


def renew_lock(engine: Engine, lock: Lock, lease_seconds: float) -> Lock | None:
    """Extend a held lease to ``lease_seconds`` from now; None when the lease was lost (expired and taken)."""
    with engine.begin() as connection:
        now = database_now(connection)
        expires_at = now + timedelta(seconds=lease_seconds)
        changed = connection.execute(
            update(locks_table).where(_is_lease(lock)).values(expires_at=expires_at)
        ).rowcount
    return Lock(lock.name, lock.owner, lock.acquired_at, expires_at) if changed else None


def read_lock(engine: Engine, name: str) -> Lock | None:
    """The unexpired lease of ``name``, or None when nobody holds it."""
    create_lock_table(engine)
    with engine.connect() as connection:
        now = database_now(connection)
        row = connection.execute(
            select(locks_table).where(locks_table.c.name == name, locks_table.c.expires_at > now)
        ).one_or_none()
    if row is None:
        return None
    return Lock(row.name, row.owner, aware(row.acquired_at), aware(row.expires_at))


def describe_holder(engine: Engine, name: str) -> str | None:
    """``<owner> since <time> UTC`` of the unexpired lease of ``name`` (None when free), for a one-sentence
    message."""
    lock = read_lock(engine, name)
    if lock is None:
        return None
    return f"{lock.owner} since {lock.acquired_at:%Y-%m-%d %H:%M:%S} UTC"


@contextmanager
def held_lock(
    url_or_engine: str | Engine, name: str, *, lease_seconds: float, owner: str | None = None
) -> Iterator[Lock | None]:
    """Hold the lock ``name`` for the ``with`` block: yields the lease, or None when another process holds it.

    The lease is released on the way out, also when the block raises. Given a URL, the engine is made here
    and disposed of at the end.
    """
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        lock = acquire_lock(engine, name, owner=owner or current_owner(), lease_seconds=lease_seconds)
        try:
            yield lock
        finally:
            if lock is not None:
                release_lock(engine, lock)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()
