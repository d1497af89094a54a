"""Lease locks in the prediction-log database: one retrain or promotion at a time, across processes and
machines, failing safe.

A lock is a row of the ``locks`` table (name, owner, acquired_at, expires_at, fence) in the prediction log's
database (SQLite file or PostgreSQL), so every process that can reach that database sees it. Taking a lock
deletes a lease of that name that expired or whose holder is gone, then INSERTs a row: the primary key lets
exactly one INSERT win, in one transaction, on both backends. Every lease gets the next **fence** of its
name (``lock_fences``: one counter per name, never reset), so two leases of one name are never confused.

Failing safe:

- **a dead holder** is noticed at once when it ran on this machine: the owner names its host, process id and
  the process's start time, and a process that is gone (or a new one under a reused id) holds nothing; a
  holder on another machine frees the lock when its lease expires;
- **a live holder keeps its lease** while it works: :func:`held_lock` renews it from a thread every third of
  the lease, and marks it lost when a renewal finds it taken;
- **a holder that lost its lease changes nothing**: before acting on what the lock guards, the holder calls
  :func:`confirm_lease` inside the transaction that records the act; it fails unless this very lease (owner,
  acquisition, fence) is still in the table, unexpired, and it extends the lease so the act that follows
  runs inside it.

Times come from the database's clock on PostgreSQL (one clock for every machine) and from this machine's
clock on SQLite (a local file).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Integer,
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
from housing.store.tables import add_missing_columns, create_missing, make_engine

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
    Column("fence", Integer, nullable=True),
)

fences_table = Table(
    "lock_fences",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("last_fence", Integer, nullable=False),
)


class LeaseLost(UserError):
    """The lease this process held was taken over (it expired, or its holder was taken for dead)."""


@dataclass(frozen=True)
class Lock:
    """A lease held on a named lock."""

    name: str
    owner: str
    acquired_at: datetime
    expires_at: datetime
    fence: int = 0
    """The lease's number among the leases of its name: every acquisition gets a larger one."""


def process_start_ticks(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux's /proc); None when unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of the line; the command name may hold spaces


def current_owner() -> str:
    """``host:pid:start:command`` of this process (the script's name only: its arguments may hold
    secrets); ``start`` tells this process from a later one given the same id."""
    command = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    started = process_start_ticks(os.getpid()) or "-"
    return f"{socket.gethostname()}:{os.getpid()}:{started}:{command or 'python'}"


def holder_is_gone(owner: str) -> bool:
    """Whether ``owner`` names a process of this machine that no longer runs (False when it runs, when it
    ran elsewhere, or when the owner does not say)."""
    parts = owner.split(":")
    if len(parts) < 4 or parts[0] != socket.gethostname() or not parts[1].isdigit() or parts[2] == "-":
        return False
    return process_start_ticks(int(parts[1])) != parts[2]


def create_table(engine: Engine, table: Table) -> None:
    """Create ``table`` if it does not exist; safe when several processes create it at the same moment."""
    try:
        create_missing(engine, [table])
    except SQLAlchemyError as error:
        where = engine.url.render_as_string(hide_password=True)
        raise UserError(f"could not create table {table.name} in {where} ({first_line(error)})") from None


def create_lock_table(engine: Engine) -> None:
    """Create the ``locks`` and ``lock_fences`` tables if they do not exist (and add the fence column to an
    older ``locks`` table)."""
    create_table(engine, locks_table)
    create_table(engine, fences_table)
    try:
        add_missing_columns(engine, locks_table, ("fence",))
    except SQLAlchemyError as error:
        where = engine.url.render_as_string(hide_password=True)
        raise UserError(f"could not add the fence column to {where}'s locks ({first_line(error)})") from None


def database_now(connection: Connection) -> datetime:
    """The time leases are measured in: the database's clock on PostgreSQL, this machine's on SQLite (UTC)."""
    if connection.dialect.name == "postgresql":
        return aware(connection.execute(select(func.clock_timestamp())).scalar_one())
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """``moment`` in UTC with its time zone (SQLite hands back naive UTC datetimes)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _next_fence(connection: Connection, name: str) -> int:
    changed = connection.execute(
        update(fences_table)
        .where(fences_table.c.name == name)
        .values(last_fence=fences_table.c.last_fence + 1)
    ).rowcount
    if not changed:
        connection.execute(insert(fences_table).values(name=name, last_fence=1))
    return int(
        connection.execute(select(fences_table.c.last_fence).where(fences_table.c.name == name)).scalar_one()
    )


def acquire_lock(engine: Engine, name: str, *, owner: str, lease_seconds: float) -> Lock | None:
    """Take the lock ``name`` for ``lease_seconds``; None when a live owner holds an unexpired lease of it.

    In one transaction: delete an expired lease, or one whose holder is gone, then INSERT with the next
    fence. Of processes racing for the same lock exactly one INSERT succeeds; the others hit the primary key
    (IntegrityError) and get None.
    """
    create_lock_table(engine)
    try:
        with engine.begin() as connection:
            now = database_now(connection)
            connection.execute(
                delete(locks_table).where(locks_table.c.name == name, locks_table.c.expires_at <= now)
            )
            holder = connection.execute(
                select(locks_table.c.owner).where(locks_table.c.name == name)
            ).scalar_one_or_none()
            if holder is not None and holder_is_gone(holder):
                logger.warning("lock %r: its holder %s is gone; taking it over", name, holder)
                connection.execute(
                    delete(locks_table).where(locks_table.c.name == name, locks_table.c.owner == holder)
                )
            elif holder is not None:
                return None
            lock = Lock(
                name, owner, now, now + timedelta(seconds=lease_seconds), _next_fence(connection, name)
            )
            connection.execute(
                insert(locks_table).values(
                    name=name,
                    owner=owner,
                    acquired_at=lock.acquired_at,
                    expires_at=lock.expires_at,
                    fence=lock.fence,
                )
            )
    except IntegrityError:
        return None
    logger.info(
        "lock %r taken by %s until %s (fence %d)",
        name,
        owner,
        f"{lock.expires_at:%Y-%m-%d %H:%M:%S} UTC",
        lock.fence,
    )
    return lock


def _is_lease(lock: Lock) -> ColumnElement[bool]:
    """The row of exactly this lease (owner, acquisition time and fence match)."""
    return (
        (locks_table.c.name == lock.name)
        & (locks_table.c.owner == lock.owner)
        & (locks_table.c.acquired_at == lock.acquired_at)
        & (locks_table.c.fence == lock.fence)
    )


def release_lock(engine: Engine, lock: Lock) -> bool:
    """Release ``lock`` if it is still this lease; False when it was lost."""
    with engine.begin() as connection:
        deleted = connection.execute(delete(locks_table).where(_is_lease(lock))).rowcount
    if not deleted:
        logger.warning(
            "lock %r was no longer held by %s (its lease expired and another process took it)",
            lock.name,
            lock.owner,
        )
    return bool(deleted)


def _extend(connection: Connection, lock: Lock, lease_seconds: float) -> Lock | None:
    now = database_now(connection)
    expires_at = now + timedelta(seconds=lease_seconds)
    changed = connection.execute(
        update(locks_table)
        .where(_is_lease(lock), locks_table.c.expires_at > now)
        .values(expires_at=expires_at)
    ).rowcount
    return replace(lock, expires_at=expires_at) if changed else None


def renew_lock(engine: Engine, lock: Lock, lease_seconds: float) -> Lock | None:
    """Extend a held lease to ``lease_seconds`` from now; None when the lease was lost (expired, or taken)."""
    with engine.begin() as connection:
        return _extend(connection, lock, lease_seconds)


def confirm_lease(connection: Connection, lock: Lock, lease_seconds: float) -> Lock:
    """Within the caller's transaction: check that ``lock`` is still this process's unexpired lease and extend
    it by ``lease_seconds``; :class:`LeaseLost` otherwise. Call it in the transaction that records an act
    the lock guards, right before the act."""
    extended = _extend(connection, lock, lease_seconds)
    if extended is None:
        raise LeaseLost(
            f"this process's lease of lock {lock.name!r} (fence {lock.fence}) expired or was taken over;"
            " not acting on it"
        )
    return extended


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
    return Lock(row.name, row.owner, aware(row.acquired_at), aware(row.expires_at), row.fence or 0)


def describe_holder(engine: Engine, name: str) -> str | None:
    """``<owner> since <time> UTC`` of the unexpired lease of ``name`` (None when free), for a one-sentence
    message."""
    lock = read_lock(engine, name)
    if lock is None:
        return None
    return f"{lock.owner} since {lock.acquired_at:%Y-%m-%d %H:%M:%S} UTC"


@dataclass
class Lease:
    """A lock held for a ``with`` block, renewed in the background (:func:`held_lock`)."""

    engine: Engine
    lock: Lock
    lease_seconds: float
    lost: threading.Event = field(default_factory=threading.Event)
    """Set when a renewal found the lease taken: nothing the lock guards may be done any more."""

    def confirm(self, connection: Connection) -> None:
        """:func:`confirm_lease` of the current lease, inside the caller's transaction."""
        if self.lost.is_set():
            raise LeaseLost(f"this process's lease of lock {self.lock.name!r} was lost; not acting on it")
        self.lock = confirm_lease(connection, self.lock, self.lease_seconds)

    def renew(self) -> bool:
        """Extend the lease now; False (and :attr:`lost` set) when it was lost."""
        try:
            renewed = renew_lock(self.engine, self.lock, self.lease_seconds)
        except SQLAlchemyError as error:  # the database is unreachable: try again at the next beat
            logger.warning("lock %r: renewing the lease failed (%s)", self.lock.name, first_line(error))
            return True
        if renewed is None:
            self.lost.set()
            logger.error("lock %r: the lease was lost (expired or taken over)", self.lock.name)
            return False
        self.lock = renewed
        return True


_held: ContextVar[tuple[Lease, ...]] = ContextVar("held_leases", default=())
"""The leases :func:`held_lock` holds in this context, innermost last."""


def current_lease(name: str) -> Lease:
    """The lease of lock ``name`` this context holds (:func:`held_lock`); :class:`UserError` when it holds
    none: whatever the lock guards may only be done while holding it."""
    for lease in reversed(_held.get()):
        if lease.lock.name == name:
            return lease
    raise UserError(f"this needs lock {name!r}, which this process does not hold")


def _keep_renewing(lease: Lease, stop: threading.Event) -> None:
    while not stop.wait(lease.lease_seconds / 3) and lease.renew():
        pass


@contextmanager
def held_lock(
    url_or_engine: str | Engine, name: str, *, lease_seconds: float, owner: str | None = None
) -> Iterator[Lease | None]:
    """Hold the lock ``name`` for the ``with`` block: yields the :class:`Lease` (renewed every third of
    ``lease_seconds`` from a thread), or None when another live process holds it.

    The lease is released on the way out, also when the block raises. Given a URL, the engine is made here
    and disposed of at the end.
    """
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        lock = acquire_lock(engine, name, owner=owner or current_owner(), lease_seconds=lease_seconds)
        if lock is None:
            yield None
            return
        lease, stop = Lease(engine, lock, lease_seconds), threading.Event()
        renewer = threading.Thread(
            target=_keep_renewing, args=(lease, stop), name=f"lease-{name}", daemon=True
        )
        renewer.start()
        token = _held.set((*_held.get(), lease))
        try:
            yield lease
        finally:
            _held.reset(token)
            stop.set()
            renewer.join()
            release_lock(engine, lease.lock)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()
