"""The production ledger: every move of the production alias, when, from which version to which, by which
command, why, and on what evidence, in the prediction log's database (table ``production_ledger``).

Appended to by :func:`housing.registry.production.move_production`, read by ``promote.py --history`` and by
:func:`previous_production`, which tells a rollback where to go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, String, Table, Text, insert, select

from housing.store.locks import aware, create_table

ROLLBACK_REASON = "rollback"
"""The reason of a ledger entry written by a rollback."""

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


def create_ledger_table(engine: Engine) -> None:
    """Create the ledger's table if it does not exist (safe from several processes at once)."""
    create_table(engine, ledger_table)


def record_change(engine: Engine, entry: LedgerEntry) -> None:
    """Append ``entry`` to the ledger (its ``id`` is ignored: the database numbers entries)."""
    create_ledger_table(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(ledger_table).values(
                at=entry.at,
                model_name=entry.model_name,
                from_version=entry.from_version,
                to_version=entry.to_version,
                command=entry.command,
                reason=entry.reason,
                evidence=json.dumps(entry.evidence, sort_keys=True, default=str),
            )
        )


def read_history(engine: Engine, model_name: str, limit: int | None = None) -> list[LedgerEntry]:
    """The ledger of ``model_name``, oldest first (with ``limit``: its newest ``limit`` entries)."""
    create_ledger_table(engine)
    query = (
        select(ledger_table).where(ledger_table.c.model_name == model_name).order_by(ledger_table.c.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        LedgerEntry(
            at=aware(row.at),
            model_name=row.model_name,
            from_version=row.from_version,
            to_version=row.to_version,
            command=row.command,
            reason=row.reason,
            evidence=json.loads(row.evidence),
            id=row.id,
        )
        for row in reversed(rows)
    ]


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
