"""The prediction log on a real SQLite file in a temp dir (no server): buffering, batched flushes that never
duplicate a row or lose one, feedback outcomes, and the monitor's read of the window."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from housing import prediction_log
from housing.prediction_log import FeedbackResult, PredictionLog, count_rows, create_tables, prediction_rows, read_window
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES, TARGET

START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log' / 'predictions.db'}"


@pytest.fixture
def log(log_url: str) -> Iterator[PredictionLog]:
    """A log without its writer thread: nothing reaches the database unless the test flushes."""
    opened = PredictionLog(log_url, flush_interval=0.01)
    yield opened
    opened.engine.dispose()


def rows_for(log: PredictionLog, request_ids: list[str], *, minutes: int = 0, prediction: float = 2.0) -> list[tuple[Any, ...]]:
    """Log rows for ``request_ids``, logged ``minutes`` after START; MedInc numbers the rows 1, 2, 3..."""
    features = np.array([[EXAMPLE_REQUEST[name] for name in FEATURE_NAMES]] * len(request_ids))
    features[:, FEATURE_NAMES.index("MedInc")] = np.arange(1, len(request_ids) + 1)
    return prediction_rows(
        request_ids, features, [prediction] * len(request_ids), model_name="CaliforniaHousing", model_version="3", latency_ms=1.5,
        created_at=log.timestamp(START + timedelta(minutes=minutes)),
    )


def stored_ids(log: PredictionLog) -> list[str]:
    """Request ids in the order SQLite stored them."""
    with log.engine.connect() as connection:
        return list(connection.execute(text("select request_id from predictions order by rowid")).scalars())


def test_append_buffers_until_flush(log, log_url):
    create_tables(log.engine)
    log.append(rows_for(log, ["a", "b", "c"]))
    assert log.pending_rows == 3
    assert count_rows(log_url) == (0, 0)  # append never touches the database
    assert log.flush() is True
    assert (log.pending_rows, log.written_rows) == (0, 3)
    assert count_rows(log_url) == (3, 0)
    assert log.flush() is True  # nothing buffered: nothing to do
    assert log.written_rows == 3


def test_flushes_write_rows_in_order_and_count_them(log):
    log.append(rows_for(log, ["a", "b"]))
    log.append(rows_for(log, ["c"], minutes=1))
    assert log.flush()
    log.append(rows_for(log, ["d", "e"], minutes=2))
    assert log.flush()
    assert stored_ids(log) == ["a", "b", "c", "d", "e"]
    assert log.status() == prediction_log.LogStatus(pending_rows=0, written_rows=5, failed_flushes=0, last_error=None)


def test_request_ids_already_stored_are_skipped(log, log_url):
    log.append(rows_for(log, ["a", "b"], prediction=1.0))
    assert log.flush()
    log.append(rows_for(log, ["b", "c"], prediction=9.0))  # a batch retried after an unclear failure
    assert log.flush() is True
    assert (log.pending_rows, log.last_error) == (0, None)
    assert count_rows(log_url) == (3, 0)
    window = read_window(log.engine)
    assert dict(zip(window["request_id"], window["prediction"], strict=True)) == {"a": 1.0, "b": 1.0, "c": 9.0}  # the first b stays


def test_failed_flush_keeps_rows_buffered_until_the_table_is_back(log, log_url):
    log.append(rows_for(log, ["a"]))
    assert log.flush()
    with log.engine.begin() as connection:
        connection.execute(text("drop table predictions"))
    log.append(rows_for(log, ["b", "c"], minutes=1))
    assert log.flush() is False
    assert log.pending_rows == 2 and log.failed_flushes == 1
    assert log.last_error is not None and "predictions" in log.last_error
    log.append(rows_for(log, ["d"], minutes=2))  # requests keep arriving meanwhile
    create_tables(log.engine)
    assert log.flush() is True
    assert stored_ids(log) == ["b", "c", "d"]  # the failed batch first, in order
    assert (log.pending_rows, log.last_error) == (0, None)


def test_unreachable_database_keeps_rows_until_it_can_be_opened(tmp_path):
    path = tmp_path / "predictions.db"
    path.mkdir()  # a directory where the database file should be: SQLite cannot open it
    log = PredictionLog(f"sqlite:///{path}")
    log.append(rows_for(log, ["a", "b"]))
    assert log.flush() is False
    assert log.pending_rows == 2 and log.failed_flushes == 1
    assert log.last_error is not None and log.last_error.startswith("could not open the prediction log at sqlite:///")
    path.rmdir()
    assert log.flush() is True
    assert count_rows(f"sqlite:///{path}") == (2, 0)
    log.engine.dispose()


def test_close_flushes_everything_buffered(log_url):
    log = PredictionLog(log_url, flush_interval=60)  # the writer thread would not flush for a minute
    log.start()
    log.append(rows_for(log, [f"r{i}" for i in range(25)]))
    assert log.pending_rows == 25
    log.close()
    assert log.pending_rows == 0
    assert count_rows(log_url) == (25, 0)


def test_a_full_batch_wakes_the_writer(log_url):
    log = PredictionLog(log_url, flush_interval=60, max_batch_rows=10)
    log.start()
    try:
        log.append(rows_for(log, [f"r{i}" for i in range(10)]))
        deadline = time.monotonic() + 10
        while log.written_rows < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.written_rows == 10 and log.pending_rows == 0
    finally:
        log.close()


def test_feedback_outcomes(log, log_url):
    log.append(rows_for(log, ["a", "b"]))
    assert log.flush()
    assert log.record_feedback("a", 2.5) == FeedbackResult.CREATED
    assert log.record_feedback("a", 2.5) == FeedbackResult.UNCHANGED  # a retry of the same label
    assert log.record_feedback("a", 3.0) == FeedbackResult.CONFLICT
    started = time.monotonic()
    assert log.record_feedback("never-logged", 1.0) == FeedbackResult.UNKNOWN_REQUEST
    assert time.monotonic() - started < 2  # looked up again after two (tiny) flush intervals, not longer
    assert count_rows(log_url) == (2, 1)
    assert read_window(log.engine)[TARGET.name].tolist()[0] == 2.5  # the first label stays


def test_feedback_for_a_buffered_prediction_flushes_it_first(log, log_url):
    log.append(rows_for(log, ["a", "b"]))
    assert log.record_feedback("b", 1.25) == FeedbackResult.CREATED
    assert log.pending_rows == 0
    assert count_rows(log_url) == (2, 1)


def test_feedback_waits_for_another_worker_to_flush(log, log_url, monkeypatch):
    """An id this process never saw may be in another worker's buffer: it is looked up once more after a pause."""
    create_tables(log.engine)  # as the API's start() does
    other_worker = PredictionLog(log_url)
    other_worker.append(rows_for(other_worker, ["theirs"]))
    pauses = []

    def pause(seconds: float) -> None:  # the other worker flushes while this one waits
        pauses.append(seconds)
        other_worker.flush()

    monkeypatch.setattr(prediction_log.time, "sleep", pause)
    assert log.record_feedback("theirs", 4.0) == FeedbackResult.CREATED
    assert pauses == [2 * log.flush_interval]
    other_worker.engine.dispose()


def test_read_window_is_oldest_first_with_labels_joined(log):
    create_tables(log.engine)
    empty = read_window(log.engine)
    assert empty.empty and list(empty.columns) == ["request_id", "created_at", *FEATURE_NAMES, "prediction", "model_version", TARGET.name]
    log.append(rows_for(log, ["late"], minutes=20))  # logged out of time order: the window sorts by created_at
    log.append(rows_for(log, ["early"], minutes=0))
    log.append(rows_for(log, ["middle"], minutes=10))
    assert log.flush()
    assert log.record_feedback("middle", 3.5) == FeedbackResult.CREATED
    window = read_window(log.engine)
    assert window["request_id"].tolist() == ["early", "middle", "late"]
    labels = window[TARGET.name].tolist()
    assert math.isnan(labels[0]) and labels[1] == 3.5 and math.isnan(labels[2])
    assert window["model_version"].tolist() == ["3"] * 3
    assert read_window(log.engine, last_n=2)["request_id"].tolist() == ["middle", "late"]
    assert read_window(log.engine, since=START + timedelta(minutes=5))["request_id"].tolist() == ["middle", "late"]


def test_count_rows_counts_predictions_and_labels(log, log_url):
    create_tables(log.engine)
    assert count_rows(log_url) == (0, 0)
    log.append(rows_for(log, [f"r{i}" for i in range(7)]))
    assert log.flush()
    for request_id, actual in (("r1", 1.0), ("r4", 2.0), ("r4", 2.0)):
        log.record_feedback(request_id, actual)
    assert count_rows(log_url) == (7, 2)
