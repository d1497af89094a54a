"""The online state of every served version's prediction interval, in the prediction log's database (table
``interval_state``): one row per version and segment (``all`` and each region), updated by every label.

A label of a prediction whose logged range missed it widens that version's range, one it fell inside narrows
it a little (adaptive conformal inference: the width's log moves by ``WIDTH_STEP * (miss - (1 - level))``,
so misses settle at ``1 - level``), and the range's centre follows the labels' price level (an exponential
average of log(label / prediction) with weight ``SHIFT_STEP``): the step of
:func:`housing.serving.intervals.after_label`, as single UPDATE statements, atomic on both backends, so
labels arriving at several workers at once all count; both stay within their limits (x2 for the centre, x4 for
the width), so no run of labels moves a range without bound. The API reads the rows of the
versions it serves every few seconds; the monitor records them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import (
    Column,
    ColumnElement,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    case,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from housing.monitoring.segments import REGION_NAMES, region_codes
from housing.serving.intervals import (
    ALL,
    SHIFT_LIMIT,
    SHIFT_STEP,
    WIDTH_LIMIT,
    WIDTH_STEP,
    OnlineScale,
    SegmentScale,
    clamp,
)
from housing.store.locks import create_table
from housing.store.tables import feedback_table, predictions_table

metadata = MetaData()
state_table = Table(
    "interval_state",
    metadata,
    Column("model_version", String(20), primary_key=True),
    Column("segment", String(64), primary_key=True),
    Column("labels", Integer, nullable=False),
    Column("shift", Float, nullable=False),
    Column("width", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


def ensure_tables(engine: Engine) -> None:
    """Create the state table if it does not exist."""
    create_table(engine, state_table)


@dataclass(frozen=True)
class LabelOutcome:
    """What one label says about its prediction's range."""

    model_version: str
    region: str
    missed: bool
    log_ratio: float


def label_outcome(engine: Engine, request_id: str) -> LabelOutcome | None:
    """The labelled prediction's version, region, whether its logged range missed the label, and
    log(label / prediction); None when the prediction was logged without a range."""
    p, f = predictions_table.c, feedback_table.c
    query = (
        select(
            p.model_version, p.prediction, p.interval_low, p.interval_high, p.Latitude, p.Longitude, f.actual
        )
        .select_from(predictions_table.join(feedback_table, p.request_id == f.request_id))
        .where(p.request_id == request_id)
    )
    with engine.connect() as connection:
        row = connection.execute(query).one_or_none()
    if row is None or row.interval_low is None or row.interval_high is None or row.prediction <= 0:
        return None
    values = np.zeros((1, 8))
    values[0, 6], values[0, 7] = row.Latitude, row.Longitude
    return LabelOutcome(
        str(row.model_version),
        REGION_NAMES[int(region_codes(values)[0])],
        not row.interval_low <= row.actual <= row.interval_high,
        math.log(max(row.actual, 1e-6) / row.prediction),
    )


def clamped(expression: ColumnElement[float], limit: float) -> ColumnElement[float]:
    """``expression`` kept within [-limit, limit], in SQL both backends run."""
    return case(
        (expression > limit, literal(limit)), (expression < -limit, literal(-limit)), else_=expression
    )


def record_label(engine: Engine, outcome: LabelOutcome, level: float) -> None:
    """Move the state of the label's version, overall and in its region, by one label."""
    ensure_tables(engine)
    miss = float(outcome.missed) - (1 - level)
    for segment in (ALL, outcome.region):
        key = (state_table.c.model_version == outcome.model_version) & (state_table.c.segment == segment)
        step = (
            update(state_table)
            .where(key)
            .values(
                labels=state_table.c.labels + 1,
                shift=clamped(
                    state_table.c.shift + SHIFT_STEP * (outcome.log_ratio - state_table.c.shift), SHIFT_LIMIT
                ),
                width=clamped(state_table.c.width + WIDTH_STEP * miss, WIDTH_LIMIT),
                updated_at=datetime.now(UTC),
            )
        )
        with engine.begin() as connection:
            if connection.execute(step).rowcount:
                continue
        first = state_table.insert().values(
            model_version=outcome.model_version,
            segment=segment,
            labels=1,
            shift=clamp(SHIFT_STEP * outcome.log_ratio, SHIFT_LIMIT),
            width=clamp(WIDTH_STEP * miss, WIDTH_LIMIT),
            updated_at=datetime.now(UTC),
        )
        try:
            with engine.begin() as connection:
                connection.execute(first)
        except IntegrityError:  # another worker's first label of this segment came first: add to it
            with engine.begin() as connection:
                connection.execute(step)


def read_state(engine: Engine, model_version: str) -> OnlineScale:
    """The online state of ``model_version`` (no rows: a fresh calibration)."""
    ensure_tables(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            select(state_table).where(state_table.c.model_version == model_version)
        ).all()
    scales = {row.segment: SegmentScale(row.shift, row.width, row.labels) for row in rows}
    return OnlineScale(scales.pop(ALL, SegmentScale()), scales)


def state_record(scale: OnlineScale) -> dict[str, dict[str, float]]:
    """A version's online state as the monitor records it: per segment, its labels, centre shift (as a
    factor) and width factor."""
    segments = {ALL: scale.overall, **scale.regions}
    return {
        name: {"labels": found.labels, "shift": math.exp(found.shift), "width": math.exp(found.width)}
        for name, found in segments.items()
    }
