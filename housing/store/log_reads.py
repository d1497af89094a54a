"""Reading the prediction log back: the monitor's window of served predictions with their labels, and row
counts."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import Engine, func, select

from housing.schema import FEATURE_NAMES, TARGET
from housing.store.tables import (
    feedback_table,
    opened_engine,
    predictions_table,
)


def read_window(
    engine: Engine,
    *,
    last_n: int | None = None,
    since: datetime | None = None,
    model_version: str | None = None,
) -> pd.DataFrame:
    """The most recent logged predictions (newest ``last_n`` rows and/or rows since ``since``; only those
    ``model_version`` served, when given), oldest first, with their feedback label in ``MedHouseVal`` (NaN
    when none has arrived)."""
    joined = predictions_table.outerjoin(
        feedback_table, predictions_table.c.request_id == feedback_table.c.request_id
    )
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
    query = query.order_by(
        predictions_table.c.created_at.desc()
    )  # the indexed column only: no sort of the table
    if last_n is not None:
        query = query.limit(last_n)
    with engine.connect() as connection:
        result = connection.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    if frame.empty:
        return pd.DataFrame(
            columns=["request_id", "created_at", *FEATURE_NAMES, "prediction", "model_version", TARGET.name]
        )
    frame[TARGET.name] = frame[TARGET.name].astype(float)
    return frame.iloc[::-1].reset_index(drop=True)


def count_rows(url: str) -> tuple[int, int]:
    """Number of logged predictions and of feedback labels in the prediction log at ``url``."""
    with opened_engine(url) as engine, engine.connect() as connection:
        predictions = connection.execute(select(func.count()).select_from(predictions_table)).scalar_one()
        labels = connection.execute(select(func.count()).select_from(feedback_table)).scalar_one()
    return int(predictions), int(labels)
