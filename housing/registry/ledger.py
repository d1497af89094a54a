"""The alias ledger: every move of the production and the staging alias, when, from which version to which,
by which command, why, and on what evidence, in the prediction log's database (table ``production_ledger``).

A move is written twice: its **intent** before the alias moves (in the transaction that confirms the mover
still holds the retrain lock, with the lease's fence), then **done** once it moved (or **failed**). A crash
between the two leaves an intent that the next :func:`housing.registry.production.reconcile_ledger` settles
by reading the alias; an alias that names a version no entry moved it to is recorded as **found** there.
``staging`` moves are recorded too: they put a model in front of canary traffic. A removed alias is recorded
with ``to_version`` :data:`UNSET`.

Appended to by :mod:`housing.registry.production`, read by ``promote.py --history`` and by
:func:`previous_production`, which tells a rollback where to go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    insert,
    or_,
    select,
    update,
)

from housing.store.locks import aware, create_table
from housing.store.tables import add_missing_columns

ROLLBACK_REASON = "rollback"
"""The reason of a ledger entry written by a rollback."""
PRODUCTION, STAGING = "production", "staging"
"""The two aliases the ledger records (an entry without an alias, from an older ledger, is production's)."""
PRICE_STEP = "price_step"
"""Entries of a person's approval of a price-index step larger than a retrain applies on its own
(``to_version``: the step; the evidence names the production version it was approved for)."""
INTENT, DONE, FAILED, ABANDONED, FOUND = "intent", "done", "failed", "abandoned", "found"
"""An entry's status: written before the move, the move made, the move failed, an intent the alias shows
never happened, an alias found where no entry put it."""
UNSET = "unset"
"""``to_version`` of an entry that removed the alias."""
ADDED_COLUMNS = ("alias", "status", "fence")
"""Columns a ledger written before intents and staging entries lacks (its rows: production moves, done)."""

metadata = MetaData()

ledger_table = Table(
    "production_ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("model_name", String(200), nullable=False, index=True),
    Column("from_version", String(20), nullable=True),
    Column("to_version", String(20), nullable=False),
    Column("command", String(500), nullable=False),
    Column("reason", Text, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("alias", String(20), nullable=True),
    Column("status", String(12), nullable=True),
    Column("fence", Integer, nullable=True),
)


@dataclass(frozen=True)
class LedgerEntry:
    """One move of the production alias."""

    at: datetime
    model_name: str
    from_version: str | None
    """The version production named before (None: there was no production)."""
    to_version: str
    command: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    """The figures behind the move (JSON-serialisable)."""
    id: int | None = None
    """Set when read back from the ledger."""
    alias: str = PRODUCTION
    status: str = DONE
    fence: int | None = None
    """The retrain lock's fence of the lease the move was made under."""


def create_ledger_table(engine: Engine) -> None:
    """Create the ledger's table if it does not exist, with the columns an older one lacks (safe from several
    processes at once)."""
    create_table(engine, ledger_table)
    add_missing_columns(engine, ledger_table, ADDED_COLUMNS)


def append_entry(connection: Connection, entry: LedgerEntry) -> int:
    """Append ``entry`` within the caller's transaction (its ``id`` is ignored: the database numbers
    entries); the new entry's id."""
    result = connection.execute(
        insert(ledger_table).values(
            at=entry.at,
            model_name=entry.model_name,
            from_version=entry.from_version,
            to_version=entry.to_version,
            command=entry.command,
            reason=entry.reason,
            evidence=json.dumps(entry.evidence, sort_keys=True, default=str),
            alias=entry.alias,
            status=entry.status,
            fence=entry.fence,
        )
    )
    key = result.inserted_primary_key
    assert key is not None  # an INSERT of one row has its key
    return int(key[0])


def record_change(engine: Engine, entry: LedgerEntry) -> int:
    """Append ``entry`` to the ledger in a transaction of its own; the new entry's id."""
    create_ledger_table(engine)
    with engine.begin() as connection:
        return append_entry(connection, entry)


def set_status(engine: Engine, entry_id: int, status: str) -> None:
    """Mark entry ``entry_id`` (an intent) done, failed or abandoned."""
    with engine.begin() as connection:
        connection.execute(update(ledger_table).where(ledger_table.c.id == entry_id).values(status=status))


def _production_entries() -> ColumnElement[bool]:
    return or_(ledger_table.c.alias.is_(None), ledger_table.c.alias == PRODUCTION)


def _moved() -> ColumnElement[bool]:
    """Entries of moves that happened: done, found, or from an older ledger (no status)."""
    return or_(ledger_table.c.status.is_(None), ledger_table.c.status.in_([DONE, FOUND]))


def _entry(row: Row[Any]) -> LedgerEntry:
    return LedgerEntry(
        at=aware(row.at),
        model_name=row.model_name,
        from_version=row.from_version,
        to_version=row.to_version,
        command=row.command,
        reason=row.reason,
        evidence=json.loads(row.evidence),
        id=row.id,
        alias=row.alias or PRODUCTION,
        status=row.status or DONE,
        fence=row.fence,
    )


def latest_entry(engine: Engine, model_name: str, alias: str) -> LedgerEntry | None:
    """The newest entry of ``alias``, whatever its status (None when the ledger has none)."""
    create_ledger_table(engine)
    which = _production_entries() if alias == PRODUCTION else ledger_table.c.alias == alias
    query = (
        select(ledger_table)
        .where(ledger_table.c.model_name == model_name, which)
        .order_by(ledger_table.c.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).one_or_none()
    return None if row is None else _entry(row)


def read_history(
    engine: Engine, model_name: str, limit: int | None = None, *, alias: str | None = PRODUCTION
) -> list[LedgerEntry]:
    """The ledger of ``model_name``'s ``alias`` (None: every alias), every status, oldest first (with
    ``limit``: its newest ``limit`` entries)."""
    create_ledger_table(engine)
    query = select(ledger_table).where(ledger_table.c.model_name == model_name)
    if alias == PRODUCTION:
        query = query.where(_production_entries())
    elif alias is not None:
        query = query.where(ledger_table.c.alias == alias)
    query = query.order_by(ledger_table.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [_entry(row) for row in reversed(rows)]


def previous_production(engine: Engine, model_name: str, current_version: str) -> str | None:
    """The version production named before ``current_version`` became production; None when the ledger has
    none.

    That is the ``from_version`` of the newest entry, rollbacks aside, that moved production to
    ``current_version``. Rollbacks are passed over so that rolling back twice walks further back
    (3 -> 2 -> 1) instead of undoing the first rollback (3 -> 2 -> 3).
    """
    create_ledger_table(engine)
    query = (
        select(ledger_table.c.from_version)
        .where(
            ledger_table.c.model_name == model_name,
            ledger_table.c.to_version == current_version,
            ledger_table.c.reason != ROLLBACK_REASON,
            _production_entries(),
            _moved(),
            ledger_table.c.from_version.is_not(None),
        )
        .order_by(ledger_table.c.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        return connection.execute(query).scalar_one_or_none()


def summarise_evidence(evidence: dict[str, Any], limit: int = 160) -> str:
    """The evidence on one line: ``key=value`` pairs, values as compact JSON, cut at ``limit`` characters."""
    text = (
        ", ".join(
            f"{key}={json.dumps(value, separators=(',', ':'), default=str)}"
            for key, value in evidence.items()
        )
        or "-"
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record_price_approval(
    engine: Engine, model_name: str, step: float, production_version: str, command: str
) -> None:
    """Record a person's approval of price-index steps up to ``step`` for retrains of production version
    ``production_version`` (a later production version needs an approval of its own)."""
    record_change(
        engine,
        LedgerEntry(
            datetime.now(UTC),
            model_name,
            production_version,
            f"{step:.4f}",
            command,
            f"price-index step up to x{step:.4f} approved for retraining production version"
            f" {production_version}",
            {"production_version": production_version, "step": step},
            alias=PRICE_STEP,
        ),
    )


def approved_price_step(engine: Engine, model_name: str, production_version: str) -> float | None:
    """The largest step approved for retrains of ``production_version`` (None: none approved)."""
    approvals = [
        float(entry.to_version)
        for entry in read_history(engine, model_name, alias=PRICE_STEP)
        if entry.evidence.get("production_version") == production_version
    ]
    return max((max(step, 1 / step) for step in approvals), default=None)
