"""Evidence for retraining: which labelled districts a model already learnt from, and what is new.

A retrain needs something new to learn from. Every retraining run records, in the prediction-log
database, the labelled traffic rows it used (``role`` "train" for the rows it trained on, "eval" for the
newest rows it held out to judge the challenger) and their district (a digest of the 8 features: the same
district sent twice is one district). The monitor counts as evidence only labelled rows of districts that
no run has used and that are not in the original training split, each district once, so 2,000 copies of
one district are one row of evidence, and a shift a model already learnt from is not evidence again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Column, Engine, MetaData, String, Table, delete, insert, select

from housing.data.digests import row_digests
from housing.schema import FEATURE_NAMES, TARGET
from housing.store.locks import create_table
from housing.store.log_reads import fair_cap
from housing.store.tables import feedback_table, predictions_table

logger = logging.getLogger(__name__)

TRAIN_ROLE, EVAL_ROLE = "train", "eval"

metadata = MetaData()
used_rows_table = Table(
    "retraining_rows",
    metadata,
    Column("training_run_id", String(64), primary_key=True),
    Column("request_id", String(32), primary_key=True),
    Column("district", String(16), nullable=False, index=True),
    Column("role", String(8), nullable=False),
)


def ensure_tables(engine: Engine) -> None:
    """Create the table if it does not exist (safe when several processes do it at once)."""
    create_table(engine, used_rows_table)


@dataclass(frozen=True)
class Evidence:
    """The labelled rows of a window that are new evidence, one per district."""

    rows: pd.DataFrame
    """New labelled districts, one row each (the newest label of the district), oldest first."""
    labelled_rows: int
    already_used: int
    """Labelled rows of districts a retraining run (or the original training split) already used."""
    repeats: int
    """Labelled rows that repeat a new district already counted."""
    over_share: int = 0
    """New districts left out because their labeller sent more than its share of the evidence."""
    labellers: int = 0
    """Labellers whose labels make up the evidence."""

    @property
    def districts(self) -> int:
        """How many new labelled districts there are."""
        return len(self.rows)


def new_evidence(
    labelled: pd.DataFrame, used_districts: set[str], labeller_share: float | None = None
) -> Evidence:
    """The labelled rows whose district is in no used set, one row per district (pure); with
    ``labeller_share``, each labeller's newest districts up to the most that keeps every labeller within that
    share of the evidence (:func:`housing.store.log_reads.fair_cap`): one labeller alone makes none.

    ``labelled``: logged predictions with their label (features, ``MedHouseVal``, ``request_id``,
    ``created_at``, and ``labeller`` when the share is capped).
    """
    if labelled.empty:
        return Evidence(labelled.assign(district=pd.Series(dtype=object)), 0, 0, 0)
    frame = labelled.assign(district=row_digests(labelled)).sort_values("created_at", kind="stable")
    fresh = frame[~frame["district"].isin(used_districts)]
    newest = fresh.drop_duplicates("district", keep="last").reset_index(drop=True)
    repeats = len(fresh) - len(newest)
    if labeller_share is None or "labeller" not in newest:
        return Evidence(newest, len(frame), len(frame) - len(fresh), repeats)
    who = newest["labeller"].fillna("")
    counts = who.value_counts()
    cap = fair_cap(counts.tolist(), len(newest), labeller_share, alone_too=True)
    rank = who.iloc[::-1].groupby(who.iloc[::-1]).cumcount().iloc[::-1]  # 0 for a labeller's newest
    kept = newest[rank < cap].reset_index(drop=True)
    return Evidence(
        kept, len(frame), len(frame) - len(fresh), repeats, len(newest) - len(kept), int(counts.size)
    )


def base_districts(x_train: pd.DataFrame) -> set[str]:
    """The districts of the original training split (never evidence: the first model learnt them)."""
    return set(row_digests(x_train))


def used_districts(engine: Engine) -> set[str]:
    """Every district a retraining run used, for training or for judging."""
    ensure_tables(engine)
    with engine.connect() as connection:
        return {row[0] for row in connection.execute(select(used_rows_table.c.district).distinct())}


def record_used_rows(engine: Engine, training_run_id: str, rows: pd.DataFrame, role: str) -> None:
    """Record that ``training_run_id`` used these labelled traffic rows (``request_id`` and features) in
    ``role``."""
    if rows.empty:
        return
    ensure_tables(engine)
    records = [
        {"training_run_id": training_run_id, "request_id": request_id, "district": district, "role": role}
        for request_id, district in zip(rows["request_id"], row_digests(rows), strict=True)
    ]
    with engine.begin() as connection:
        connection.execute(
            delete(used_rows_table).where(
                used_rows_table.c.training_run_id == training_run_id,
                used_rows_table.c.request_id.in_([record["request_id"] for record in records]),
            )
        )
        connection.execute(insert(used_rows_table), records)


def trained_rows(engine: Engine, training_run_id: str, role: str = TRAIN_ROLE) -> pd.DataFrame:
    """The labelled traffic rows ``training_run_id`` trained on (features, label, ``request_id``,
    ``created_at``); with ``role=EVAL_ROLE``, those it held out to judge with."""
    ensure_tables(engine)
    query = (
        select(
            predictions_table.c.request_id,
            predictions_table.c.created_at,
            *(predictions_table.c[name] for name in FEATURE_NAMES),
            feedback_table.c.actual.label(TARGET.name),
        )
        .select_from(
            used_rows_table.join(
                predictions_table, predictions_table.c.request_id == used_rows_table.c.request_id
            ).join(feedback_table, feedback_table.c.request_id == used_rows_table.c.request_id)
        )
        .where(used_rows_table.c.training_run_id == training_run_id, used_rows_table.c.role == role)
        .order_by(predictions_table.c.created_at)
    )
    with engine.connect() as connection:
        result = connection.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    if frame.empty:
        return pd.DataFrame(columns=["request_id", "created_at", *FEATURE_NAMES, TARGET.name])
    frame[TARGET.name] = frame[TARGET.name].astype(float)
    return frame
