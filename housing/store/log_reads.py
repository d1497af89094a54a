"""Reading the prediction log back: the monitor's window of served predictions with their labels, and row
counts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pandas as pd
from sqlalchemy import ColumnElement, Engine, FromClause, and_, func, select, true

from housing.schema import FEATURE_NAMES, TARGET
from housing.store.tables import (
    feedback_table,
    opened_engine,
    predictions_table,
)

WINDOW_COLUMNS = (
    "request_id",
    "created_at",
    *FEATURE_NAMES,
    "prediction",
    "model_version",
    "client",
    "interval_low",
    "interval_high",
)


def fair_cap(counts: list[int], window: int, share: float | None, *, alone_too: bool = False) -> int:
    """The most rows any one client may have in a window of at most ``window`` rows (pure).

    Each client keeps ``min(its rows, cap)``: the largest cap whose total fits the window, and, with two or
    more clients and a ``share``, no larger than keeps every client within ``share`` of the total (water
    filling: the smaller clients keep all their rows). One client alone has no one to be balanced against,
    unless ``alone_too``: then a share below 1 leaves it nothing.
    """

    def total(cap: int) -> int:
        return sum(min(count, cap) for count in counts)

    def largest(holds: Callable[[int], bool]) -> int:  # holds: true up to some cap, false after it
        low, high = 0, max(counts, default=0)
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if holds(middle) else (low, middle - 1)
        return low

    cap = largest(lambda cap: total(cap) <= window)
    if share is not None and (len(counts) >= 2 or alone_too):
        cap = min(cap, largest(lambda cap: cap <= share * total(cap)))
    return cap


def read_window(
    engine: Engine,
    *,
    last_n: int | None = None,
    since: datetime | None = None,
    model_version: str | None = None,
    client_share: float | None = None,
) -> pd.DataFrame:
    """The most recent logged predictions (newest ``last_n`` rows and/or rows since ``since``; only those
    ``model_version`` served, when given), oldest first, with their feedback label in ``MedHouseVal`` (NaN
    when none has arrived) and its ``labeller``.

    With ``client_share``, the newest ``last_n`` are chosen client by client (:func:`fair_cap`): a client
    that sent more than its share of the window keeps only its newest rows, so one client's flood neither
    pushes the others' rows out of the window nor makes up most of it.
    """
    condition: ColumnElement[bool] = true()
    if since is not None:
        condition = and_(condition, predictions_table.c.created_at >= since)
    if model_version is not None:
        condition = and_(condition, predictions_table.c.model_version == model_version)
    columns = [predictions_table.c[name] for name in WINDOW_COLUMNS]
    if client_share is not None and last_n is not None:
        cap = fair_cap(client_counts(engine, condition), last_n, client_share)
        rank = (
            func.row_number()
            .over(partition_by=predictions_table.c.client, order_by=predictions_table.c.created_at.desc())
            .label("client_rank")
        )
        ranked = select(*columns, rank).where(condition).subquery()
        query = select(*(ranked.c[name] for name in WINDOW_COLUMNS)).where(ranked.c.client_rank <= cap)
        base: FromClause = ranked
    else:
        query = select(*columns).where(condition)
        base = predictions_table
    query = (
        query.add_columns(feedback_table.c.actual.label(TARGET.name), feedback_table.c.labeller)
        .select_from(base.outerjoin(feedback_table, base.c.request_id == feedback_table.c.request_id))
        .order_by(base.c.created_at.desc())  # the indexed column only: no sort of the table
    )
    if last_n is not None:
        query = query.limit(last_n)
    with engine.connect() as connection:
        result = connection.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    if frame.empty:
        return pd.DataFrame(columns=[*WINDOW_COLUMNS, TARGET.name, "labeller"])
    frame[TARGET.name] = frame[TARGET.name].astype(float)
    return frame.iloc[::-1].reset_index(drop=True)


def client_counts(engine: Engine, condition: ColumnElement[bool]) -> list[int]:
    """Rows per client among the predictions ``condition`` selects."""
    query = (
        select(func.count())
        .select_from(predictions_table)
        .where(condition)
        .group_by(predictions_table.c.client)
    )
    with engine.connect() as connection:
        return [int(count) for count in connection.execute(query).scalars()]


def count_rows(url: str) -> tuple[int, int]:
    """Number of logged predictions and of feedback labels in the prediction log at ``url``."""
    with opened_engine(url) as engine, engine.connect() as connection:
        predictions = connection.execute(select(func.count()).select_from(predictions_table)).scalar_one()
        labels = connection.execute(select(func.count()).select_from(feedback_table)).scalar_one()
    return int(predictions), int(labels)
