"""Champion and challenger without a server: the canary's stable routing, the shadow scorer on a real SQLite
log (both predictions in one row, a failing or slow challenger never blocks or loses a row), the log's
in-place migration, the live evidence read, and the live verdict's every branch."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from housing.schema import FEATURE_NAMES
from housing.store.prediction_log import PredictionLog
from housing.store.spill_file import row_restorer
from housing.store.tables import PREDICTION_COLUMNS, create_tables, make_engine, prediction_rows
from tests.helpers import CHALLENGER, CHAMPION, numbered_districts, served_batch, shadow_scorer, stub_model


def stored(log: PredictionLog) -> list[tuple[Any, ...]]:
    with log.engine.connect() as connection:
        return list(
            connection.execute(
                text(
                    "select request_id, model_version, served_alias, prediction, shadow_prediction,"
                    " shadow_model_version from predictions order by request_id"
                )
            )
        )


def test_every_row_is_logged_with_both_predictions_either_model_answering(log):
    shadow, metrics = shadow_scorer(log, lambda alias: CHALLENGER if alias == "production" else CHAMPION)
    assert shadow.submit(served_batch(log, ["a", "b"], CHAMPION))
    assert shadow.submit(
        served_batch(log, ["c"], CHALLENGER, start=5)
    )  # a canary request: the champion is its shadow
    assert shadow.drain() == 3
    assert log.flush()
    assert stored(log) == [
        ("a", "3", "production", pytest.approx(0.2), pytest.approx(0.3), "7"),
        ("b", "3", "production", pytest.approx(0.4), pytest.approx(0.6), "7"),
        ("c", "7", "staging", pytest.approx(1.5), pytest.approx(1.0), "3"),
    ]
    assert metrics.shadow_rows._value.get() == 3
    assert metrics.shadow_difference._sum.get() == pytest.approx(0.1 + 0.2 + 0.5)


def test_a_failing_challenger_costs_only_its_column(log):
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    shadow, metrics = shadow_scorer(log, lambda alias: stub_model("9", broken, alias="staging"))
    shadow.submit(served_batch(log, ["a", "b"], CHAMPION))
    assert shadow.drain() == 2
    assert log.flush()
    assert [row[4:] for row in stored(log)] == [(None, None), (None, None)]
    assert [row[3] for row in stored(log)] == [pytest.approx(0.2), pytest.approx(0.4)]
    assert metrics.shadow_failures.labels("error")._value.get() == 2


def test_a_wrong_shaped_shadow_answer_is_a_failure_not_a_misaligned_row(log):
    shadow, metrics = shadow_scorer(
        log, lambda alias: stub_model("9", lambda x: np.zeros(len(x) + 1), alias="staging")
    )
    shadow.submit(served_batch(log, ["a", "b"], CHAMPION))
    shadow.drain()
    log.flush()
    assert [row[4] for row in stored(log)] == [None, None]
    assert metrics.shadow_failures.labels("error")._value.get() == 2


def test_a_full_backlog_refuses_so_the_caller_logs_directly(log):
    shadow, _ = shadow_scorer(log, lambda alias: CHALLENGER, max_rows=3)
    assert shadow.submit(served_batch(log, ["a", "b"], CHAMPION))
    assert not shadow.submit(served_batch(log, ["c", "d"], CHAMPION))  # nothing taken
    assert shadow.backlog_rows == 2
    shadow.drain()
    assert shadow.backlog_rows == 0
    assert shadow.submit(served_batch(log, ["c", "d"], CHAMPION))


def test_rows_the_log_refuses_are_kept_and_appended_later(tmp_path: Path) -> None:
    log = PredictionLog(
        f"sqlite:///{tmp_path / 'full.db'}", max_buffer_rows=2, spill_dir=None
    )  # full at 2 rows, nowhere to spill
    create_tables(log.engine)
    log.append(
        prediction_rows(
            ["x", "y"],
            numbered_districts(2, start=50),
            [1.0, 1.0],
            model_name="M",
            model_version="3",
            latency_ms=1.0,
            created_at=log.timestamp(datetime.now(UTC)),
        )
    )
    shadow, _ = shadow_scorer(log, lambda alias: CHALLENGER)
    shadow.submit(served_batch(log, ["a", "b"], CHAMPION))
    assert shadow.drain() == 0  # the log is full
    assert shadow.backlog_rows == 2  # kept, and still counted: the backlog cap keeps holding
    assert log.flush()  # the log writes its rows and has room again
    assert shadow.drain() == 2
    assert log.flush()
    assert [row[0] for row in stored(log)] == ["a", "b", "x", "y"]
    assert stored(log)[0][4] == pytest.approx(0.3)  # scored once, before the refusal, and kept
    log.engine.dispose()


def test_close_hands_every_waiting_row_to_the_log(log):
    shadow, _ = shadow_scorer(log, lambda alias: CHALLENGER, interval=60)
    shadow.start()
    shadow.submit(served_batch(log, ["a"], CHAMPION))
    shadow.close()
    log.flush()
    assert [row[0] for row in stored(log)] == ["a"]


def test_the_thread_logs_without_being_asked(log):
    shadow, _ = shadow_scorer(log, lambda alias: CHALLENGER, interval=0.01)
    shadow.start()
    try:
        shadow.submit(served_batch(log, ["a"], CHAMPION))
        for _ in range(500):
            if log.pending_rows:
                break
            time.sleep(0.01)
        assert log.pending_rows == 1
    finally:
        shadow.close()


OLD_SCHEMA = (
    "CREATE TABLE predictions (request_id VARCHAR(32) PRIMARY KEY, created_at DATETIME NOT NULL, "
    + ", ".join(f'"{name}" FLOAT NOT NULL' for name in FEATURE_NAMES)
    + ", prediction FLOAT NOT NULL, model_name VARCHAR(200) NOT NULL, model_version VARCHAR(20) NOT NULL, "
    "latency_ms FLOAT NOT NULL)"
)


def test_an_older_log_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    values = ", ".join(
        ["'old'", "'2024-01-01 00:00:00.000000'", *["1.0"] * len(FEATURE_NAMES), "2.0", "'M'", "'1'", "1.5"]
    )
    with engine.begin() as connection:
        connection.execute(text(OLD_SCHEMA))
        connection.execute(text(f"INSERT INTO predictions VALUES ({values})"))
    create_tables(engine)
    create_tables(engine)  # twice (another process): nothing to add, no error
    log = PredictionLog(url)
    log.append(
        prediction_rows(
            ["new"],
            numbered_districts(1),
            [2.5],
            model_name="M",
            model_version="2",
            latency_ms=1.0,
            created_at=log.timestamp(datetime.now(UTC)),
            served_alias="production",
            shadow=[2.7],
            shadow_version="3",
        )
    )
    assert log.flush()
    assert stored(log) == [("new", "2", "production", 2.5, 2.7, "3"), ("old", "1", None, 2.0, None, None)]
    engine.dispose()
    log.engine.dispose()


def test_a_row_spilled_by_an_older_release_is_restored_with_empty_new_columns():
    old_row = ["id", "2024-01-01T00:00:00+00:00", *[1.0] * len(FEATURE_NAMES), 2.0, "M", "1", 1.5]
    restored = row_restorer("postgresql", len(PREDICTION_COLUMNS))(json.loads(json.dumps(old_row)))
    assert len(restored) == len(PREDICTION_COLUMNS)
    assert restored[-3:] == (None, None, None)
    assert isinstance(restored[1], datetime)


def test_a_flood_from_one_client_cannot_starve_the_others_of_their_shadow_predictions(log):
    """The backlog is full of one client's rows: another client's rows still get their place (the flood's
    newest give theirs up and are logged without the shadow prediction); the flood's own next rows are
    refused a place, and logged by the caller without it."""
    shadow, metrics = shadow_scorer(log, lambda alias: CHALLENGER, max_rows=100)
    flood = [served_batch(log, [f"f{i:03d}"], CHAMPION, start=i) for i in range(100)]
    flood = [replace(batch, client="mallory") for batch in flood]
    assert all(shadow.submit(batch) for batch in flood)
    assert not shadow.submit(replace(served_batch(log, ["f100"], CHAMPION), client="mallory"))
    honest = [
        replace(served_batch(log, [f"h{i:02d}"], CHAMPION, start=500 + i), client="alice") for i in range(40)
    ]
    assert all(shadow.submit(batch) for batch in honest)  # room made for every one of them
    assert shadow.backlog_rows == 100
    assert metrics.shadow_failures.labels("backlog")._value.get() == 40
    shadow.drain()
    assert log.flush()
    rows = {row[0]: row for row in stored(log)}
    assert all(rows[f"h{i:02d}"][4] is not None for i in range(40))  # every honest row with its shadow
    without = sorted(request_id for request_id, row in rows.items() if row[4] is None)
    assert without == [f"f{i:03d}" for i in range(60, 100)]  # the flood's newest gave up their place
