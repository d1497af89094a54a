"""The prediction log on a real SQLite file in a temp dir (no server): buffering, batched flushes that never
duplicate a row or lose one, feedback outcomes, and the monitor's read of the window."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import SQLAlchemyError

from housing.api.routes.feedback import record_when_logged
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES, TARGET
from housing.store import prediction_log
from housing.store.log_reads import count_rows, read_window
from housing.store.prediction_log import FeedbackResult, LogUnavailable, PredictionLog
from housing.store.spill_file import SPILL_PREFIX, SPILL_SUFFIX
from housing.store.tables import PREDICTION_COLUMNS, create_tables, make_engine
from tests.helpers import (
    START,
    check_a_batch_retried_after_an_unclear_failure_is_stored_once,
    check_two_conflicting_labels_at_once_store_the_first_and_refuse_the_other,
    finishes,
    rows_for,
    wait_for,
)


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log' / 'predictions.db'}"


@pytest.fixture
def log(log_url: str) -> Iterator[PredictionLog]:
    """A log without its writer thread: nothing reaches the database unless the test flushes."""
    opened = PredictionLog(log_url, flush_interval=0.01)
    yield opened
    opened.engine.dispose()


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
    assert log.status() == prediction_log.LogStatus(
        pending_rows=0, written_rows=5, failed_flushes=0, last_error=None
    )


def test_request_ids_already_stored_are_skipped(log, log_url):
    log.append(rows_for(log, ["a", "b"], prediction=1.0))
    assert log.flush()
    log.append(rows_for(log, ["b", "c"], prediction=9.0))  # a batch retried after an unclear failure
    assert log.flush() is True
    assert (log.pending_rows, log.last_error) == (0, None)
    assert count_rows(log_url) == (3, 0)
    window = read_window(log.engine)
    assert dict(zip(window["request_id"], window["prediction"], strict=True)) == {
        "a": 1.0,
        "b": 1.0,
        "c": 9.0,
    }  # the first b stays


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
    assert log.last_error is not None and log.last_error.startswith(
        "could not open the prediction log at sqlite:///"
    )
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
        assert wait_for(lambda: log.written_rows == 10, every=0.01) and log.pending_rows == 0
    finally:
        log.close()


def test_feedback_outcomes(log, log_url):
    log.append(rows_for(log, ["a", "b"]))
    assert log.flush()
    assert log.record_feedback("a", 2.5) == FeedbackResult.CREATED
    assert log.record_feedback("a", 2.5) == FeedbackResult.UNCHANGED  # a retry of the same label
    assert log.record_feedback("a", 3.0) == FeedbackResult.CONFLICT
    assert log.record_feedback("never-logged", 1.0) == FeedbackResult.UNKNOWN_REQUEST
    assert count_rows(log_url) == (2, 1)
    assert read_window(log.engine)[TARGET.name].tolist()[0] == 2.5  # the first label stays


def test_feedback_for_a_buffered_prediction_is_pending_until_flushed(log, log_url):
    """No flush and no wait on the caller's thread: the writer is woken and the caller asks again."""
    create_tables(log.engine)
    log.append(rows_for(log, ["a", "b"]))
    assert log.record_feedback("b", 1.25) == FeedbackResult.PENDING
    assert log._wake.is_set()  # the writer thread flushes now rather than at its next interval
    assert log.pending_rows == 2 and count_rows(log_url) == (0, 0)
    assert log.flush()
    assert log.record_feedback("b", 1.25) == FeedbackResult.CREATED
    assert count_rows(log_url) == (2, 1)


def test_feedback_for_another_workers_unflushed_prediction_never_sleeps(log, log_url, monkeypatch):
    """An id this process never saw may be in another worker's buffer: UNKNOWN_REQUEST at once (the route asks
    again asynchronously), then CREATED once that worker has flushed."""
    create_tables(log.engine)  # as the API's start() does
    other_worker = PredictionLog(log_url)
    other_worker.append(rows_for(other_worker, ["theirs"]))

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"record_feedback slept {seconds} s in a shared thread")

    monkeypatch.setattr(prediction_log.time, "sleep", no_sleep)
    assert log.record_feedback("theirs", 4.0) == FeedbackResult.UNKNOWN_REQUEST
    other_worker.flush()
    assert log.record_feedback("theirs", 4.0) == FeedbackResult.CREATED
    other_worker.engine.dispose()


def test_the_route_awaits_another_workers_flush_without_holding_a_thread(log, log_url):
    create_tables(log.engine)
    log.flush_interval = 0.2
    other_worker = PredictionLog(log_url)
    other_worker.append(rows_for(other_worker, ["theirs"]))

    async def label_while_the_other_worker_flushes() -> str:
        flushed = asyncio.get_running_loop().call_later(
            0.1, other_worker.flush
        )  # on the loop: the route must yield it
        try:
            return await record_when_logged(log, "theirs", 4.0)
        finally:
            flushed.cancel()

    assert asyncio.run(label_while_the_other_worker_flushes()) == FeedbackResult.CREATED
    asked: list[float] = []
    record_feedback = log.record_feedback

    def counted(request_id: str, actual: float, labeller: str | None = None) -> str:  # the real look-up
        asked.append(actual)
        return record_feedback(request_id, actual, labeller)

    log.record_feedback = counted
    assert asyncio.run(record_when_logged(log, "never-logged", 1.0)) == FeedbackResult.UNKNOWN_REQUEST
    assert len(asked) >= 2, asked  # asked again while the deadline of two flush intervals ran, then gave up
    other_worker.engine.dispose()


def test_read_window_is_oldest_first_with_labels_joined(log):
    create_tables(log.engine)
    empty = read_window(log.engine)
    assert empty.empty and list(empty.columns) == [
        "request_id",
        "created_at",
        *FEATURE_NAMES,
        "prediction",
        "model_version",
        "client",
        "interval_low",
        "interval_high",
        TARGET.name,
        "labeller",
    ]
    log.append(
        rows_for(log, ["late"], minutes=20)
    )  # logged out of time order: the window sorts by created_at
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
    assert read_window(log.engine, since=START + timedelta(minutes=5))["request_id"].tolist() == [
        "middle",
        "late",
    ]


def test_count_rows_counts_predictions_and_labels(log, log_url):
    create_tables(log.engine)
    assert count_rows(log_url) == (0, 0)
    log.append(rows_for(log, [f"r{i}" for i in range(7)]))
    assert log.flush()
    for request_id, actual in (("r1", 1.0), ("r4", 2.0), ("r4", 2.0)):
        log.record_feedback(request_id, actual)
    assert count_rows(log_url) == (7, 2)


# --- bounded memory, the spill, replay -------------------------------------------------------------------
@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    return tmp_path / "spill"


@pytest.fixture
def spilling_log(log_url: str, spill_dir: Path) -> Iterator[PredictionLog]:
    """A log with a 10-row memory cap and a spill folder, without its writer thread."""
    opened = PredictionLog(log_url, flush_interval=0.01, max_buffer_rows=10, spill_dir=spill_dir)
    yield opened
    opened.close(timeout=0)


def spill_files(spill_dir: Path) -> list[Path]:
    return sorted(spill_dir.glob(f"{SPILL_PREFIX}*{SPILL_SUFFIX}"))


def spilled_ids(path: Path) -> list[str]:
    """Request ids in a spill file, in file order."""
    return [json.loads(line)[0] for line in path.read_text().splitlines()]


def test_past_the_cap_rows_spill_and_memory_stays_within_it(spilling_log, log_url, spill_dir):
    log = spilling_log
    create_tables(log.engine)
    ids = [f"r{i:02d}" for i in range(25)]
    for start in range(0, 25, 3):
        log.append(rows_for(log, ids[start : start + 3]))
        assert log.pending.memory_rows <= 10
    assert log.pending_rows == 25 and log.status().spilled_rows > 0
    [spill] = spill_files(spill_dir)
    assert str(os.getpid()) in spill.name
    assert spilled_ids(spill) == ids  # everything from the first spill on goes there, in order
    assert count_rows(log_url) == (0, 0)  # still no database write on append
    assert log.flush()
    assert stored_ids(log) == ids
    assert (
        log.pending_rows == 0 and spill.stat().st_size == 0
    )  # emptied once replayed; kept, locked, for the next outage
    log.append(rows_for(log, ["after"]))
    assert log.pending.memory_rows == 1  # back to the memory buffer
    log.close(timeout=0)
    assert spill_files(spill_dir) == [] and count_rows(log_url) == (26, 0)


def test_an_outage_spills_rows_then_recovery_replays_them_once_in_order(spilling_log, spill_dir):
    log = spilling_log
    log.append(rows_for(log, ["a"]))
    assert log.flush()
    with log.engine.begin() as connection:
        connection.execute(text("drop table predictions"))
    log.append(rows_for(log, ["b", "c"], minutes=1))
    assert log.flush() is False
    assert log.pending.memory_rows == 0 and log.status().spilled_rows == 2  # on disk, not in memory
    log.append(rows_for(log, ["d"], minutes=2))  # while the database fails, rows go straight to the spill
    log.append(rows_for(log, ["e"], minutes=3))
    assert log.pending.memory_rows == 0 and log.pending_rows == 4
    [spill] = spill_files(spill_dir)
    assert spilled_ids(spill) == ["b", "c", "d", "e"]
    create_tables(log.engine)
    assert (
        log.record_feedback("d", 1.0) == FeedbackResult.UNKNOWN_REQUEST
    )  # in the spill, not in memory: not PENDING
    assert log.flush() is True
    assert stored_ids(log) == ["b", "c", "d", "e"]
    assert log.flush() is True and stored_ids(log) == ["b", "c", "d", "e"]  # replayed exactly once
    assert log.status().spilled_rows == 0 and log.pending_rows == 0 and log.last_error is None


def test_an_unreachable_database_spills_until_it_can_be_opened(tmp_path, spill_dir):
    path = tmp_path / "predictions.db"
    path.mkdir()  # a directory where the database file should be: SQLite cannot open it
    log = PredictionLog(f"sqlite:///{path}", max_buffer_rows=10, spill_dir=spill_dir)
    log.append(rows_for(log, ["a", "b"]))
    assert log.flush() is False
    assert log.pending.memory_rows == 0 and spilled_ids(spill_files(spill_dir)[0]) == ["a", "b"]
    path.rmdir()
    assert log.flush() is True
    assert count_rows(f"sqlite:///{path}") == (2, 0)
    log.close()


def test_a_stalled_flush_sends_new_rows_to_the_spill_and_nothing_is_written_twice(spilling_log, spill_dir):
    """A database that hangs rather than refuses: once the batch in flight is older than two flush intervals,
    rows (that batch first) go to the spill; the batch then succeeds, and the replay skips its copy."""
    log = spilling_log
    create_tables(log.engine)
    release, inside = threading.Event(), threading.Event()
    insert = log._insert_rows

    def hanging_insert(rows):
        inside.set()
        release.wait(10)
        insert(rows)

    log._insert_rows = hanging_insert
    log.append(rows_for(log, ["a", "b"]))
    flusher = threading.Thread(target=log.flush)
    flusher.start()
    assert inside.wait(10)
    time.sleep(3 * log.flush_interval)
    log.append(rows_for(log, ["c"], minutes=1))
    [spill] = spill_files(spill_dir)
    assert spilled_ids(spill) == ["a", "b", "c"]
    release.set()
    flusher.join(10)
    log._insert_rows = insert
    assert stored_ids(log) == ["a", "b"]
    assert log.flush() and stored_ids(log) == ["a", "b", "c"]


DEAD_WORKER = """
import sys, time
from pathlib import Path
from housing.store.prediction_log import PredictionLog
log = PredictionLog(sys.argv[1], spill_dir=Path(sys.argv[2]), max_buffer_rows=1000)
log.append([(f"dead{i}", "2024-01-01 00:00:00.000000", *[1.0] * 8, 2.0, "CaliforniaHousing", "3", 1.5)
            for i in range(5)])
assert not log.flush()  # the database is down: the rows go to the spill
print("spilled", flush=True)
time.sleep(60)
"""


def test_the_spill_of_a_killed_process_is_replayed_by_the_next_log(tmp_path, spill_dir):
    broken = tmp_path / "broken.db"
    broken.mkdir()
    worker = subprocess.Popen(
        [sys.executable, "-c", DEAD_WORKER, f"sqlite:///{broken}", str(spill_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "spilled"
        [orphan] = spill_files(spill_dir)
        assert f"-{worker.pid}-" in orphan.name
        broken.rmdir()  # the database is back
        alive = PredictionLog(f"sqlite:///{broken}", spill_dir=spill_dir)
        assert alive.flush() and stored_ids(alive) == []  # its owner is alive and holds the lock: left alone
        alive.close()
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    restarted = PredictionLog(f"sqlite:///{broken}", spill_dir=spill_dir)
    assert restarted.flush()
    assert stored_ids(restarted) == [f"dead{i}" for i in range(5)]
    assert spill_files(spill_dir) == []  # replayed, then deleted
    restarted.close()


def test_a_spill_replayed_twice_writes_no_duplicate(tmp_path, spill_dir):
    """A process killed after replaying a dead process's spill but before deleting it: the next replay skips
    every row."""
    (tmp_path / "down.db").mkdir()
    log_url = f"sqlite:///{tmp_path / 'down.db'}"
    first = PredictionLog(log_url, spill_dir=spill_dir)  # a database that cannot open
    first.append(rows_for(first, ["a", "b", "c"]))
    assert not first.flush()
    first.close(timeout=0)  # shut down during the outage: its spill stays for the next start
    [orphan] = spill_files(spill_dir)
    kept = orphan.read_bytes()
    (tmp_path / "down.db").rmdir()  # the database is back
    replayer = PredictionLog(log_url, spill_dir=spill_dir)
    assert replayer.flush() and count_rows(log_url) == (3, 0)
    replayer.close()
    orphan.write_bytes(
        kept
        + b'["d","2024-01-01 00:00:00.000000",1,1,1,1,1,1,34,-118,2.0,"CaliforniaHousing","3",1.5]\n["torn'
    )
    again = PredictionLog(log_url, spill_dir=spill_dir)
    assert again.flush()
    assert stored_ids(again) == ["a", "b", "c", "d"] and spill_files(spill_dir) == []
    again.close()


def test_the_batch_in_flight_counts_against_the_memory_cap(log_url, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the spill folder cannot be created here")
    log = PredictionLog(log_url, max_buffer_rows=5, spill_dir=blocker / "spill")
    log.append(rows_for(log, ["a", "b", "c", "d", "e"]))
    batch = log.pending.take_batch()  # the writer holds them while the database works on them
    assert log.pending.memory_rows == 5
    with pytest.raises(LogUnavailable, match="spill file cannot be written"):
        log.append(rows_for(log, ["f"], minutes=1))
    log.pending.batch_failed(batch)  # the write failed: the batch is back in memory, still within the cap
    assert log.pending.memory_rows == 5 and log.pending_rows == 5
    log.close(timeout=0)


def test_when_the_spill_cannot_be_written_append_refuses_past_the_cap(log, log_url, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the spill folder cannot be created here")
    log = PredictionLog(log_url, max_buffer_rows=5, spill_dir=blocker / "spill")
    log.append(rows_for(log, ["a"]))
    assert log.flush()
    with log.engine.begin() as connection:
        connection.execute(text("drop table predictions"))
    log.append(rows_for(log, ["b", "c", "d"], minutes=1))
    assert log.flush() is False
    assert log.pending.memory_rows == 3 and log.status().spill_error  # kept in memory, within the cap
    with pytest.raises(LogUnavailable, match="spill file cannot be written") as refused:
        log.append(rows_for(log, ["e", "f", "g"], minutes=2))
    assert "no such table" in str(refused.value) and LogUnavailable.retry_after >= 1
    assert log.pending_rows == 3  # nothing of the refused request was queued
    log.append(rows_for(log, ["e", "f"], minutes=2))  # within the cap again
    blocker.unlink()  # the disk is back: the next append spills memory first, then its rows
    log.append(rows_for(log, ["g"], minutes=3))
    assert log.pending.memory_rows == 0 and log.status().spilled_rows == 6
    create_tables(log.engine)
    assert log.flush()
    assert stored_ids(log) == ["b", "c", "d", "e", "f", "g"]
    log.close()


def test_concurrent_identical_labels_are_created_once_and_never_conflict(log, log_url):
    log.append(rows_for(log, ["a", "b", "c"]))
    assert log.flush()
    lookup, together, first_look = log._stored_label, threading.Barrier(8), threading.local()

    def look_together(request_id: str) -> float | None:
        """Every thread looks for a stored label before any inserts: the insert race happens every time."""
        stored = lookup(request_id)
        if not getattr(first_look, "done", False):
            first_look.done = True
            together.wait(10)
        return stored

    log._stored_label = look_together
    for request_id in ("a", "b", "c"):
        outcomes: list[str] = []
        threads = [
            threading.Thread(
                target=lambda rid=request_id, out=outcomes: out.append(log.record_feedback(rid, 2.5))
            )
            for _ in range(8)
        ]
        first_look.__dict__.clear()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(outcomes) == [FeedbackResult.CREATED] + [FeedbackResult.UNCHANGED] * 7, outcomes
    assert count_rows(log_url) == (3, 3)


@pytest.mark.parametrize("spilled", [False, True], ids=["retried from memory", "replayed from the spill"])
def test_a_batch_retried_after_an_unclear_failure_is_stored_once(log_url, spill_dir, spilled):
    check_a_batch_retried_after_an_unclear_failure_is_stored_once(log_url, spill_dir if spilled else None)


def test_two_conflicting_labels_at_once_store_the_first_and_refuse_the_other(log_url):
    check_two_conflicting_labels_at_once_store_the_first_and_refuse_the_other(log_url)


def test_sqlite_waits_for_locks_no_longer_than_the_statement_timeout(log_url):
    engine = make_engine(log_url, connect_timeout=1.5, statement_timeout=2.5)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
    assert engine.pool.timeout() == 1.5  # type: ignore[attr-defined]
    engine.dispose()


def test_postgresql_connections_get_connect_and_statement_timeouts():
    engine = make_engine(
        "postgresql+psycopg://user:secret@127.0.0.1:9/log", connect_timeout=0.5, statement_timeout=2.5
    )
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def capture(_dialect, _record, _args, params):
        seen.update(params)
        raise ConnectionRefusedError("captured")

    with pytest.raises(ConnectionRefusedError, match="captured"):
        engine.connect()
    assert seen["connect_timeout"] == 2  # libpq counts whole seconds, 2 at least
    assert seen["options"] == "-c statement_timeout=2500"
    engine.dispose()


def test_a_hung_database_fails_within_the_connect_timeout(tmp_path, spill_dir):
    """A PostgreSQL address that accepts connections and never answers: flushes and label look-ups fail in
    seconds, and the rows are safe in the spill meanwhile."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"postgresql+psycopg://user:secret@127.0.0.1:{silent.getsockname()[1]}/log"
        log = PredictionLog(
            url, max_buffer_rows=10, spill_dir=spill_dir, connect_timeout=2, statement_timeout=2
        )
        log.append([("a", START, *[1.0] * 8, 2.0, "CaliforniaHousing", "3", 1.5)])
        assert finishes(log.flush) is False  # fails (connect timeout), does not hang
        assert log.pending.memory_rows == 0 and log.status().spilled_rows == 1
        with pytest.raises(SQLAlchemyError):
            finishes(lambda: log.record_feedback("a", 1.0))
        log.pending.spill.close()  # type: ignore[union-attr]
        log.engine.dispose()


def test_a_spill_only_goes_to_the_database_it_was_logged_for(tmp_path, log_url, spill_dir):
    (tmp_path / "down.db").mkdir()
    down_url = f"sqlite:///{tmp_path / 'down.db'}"
    first = PredictionLog(down_url, spill_dir=spill_dir)
    first.append(rows_for(first, ["a"]))
    assert not first.flush()
    first.close(timeout=0)
    other_database = PredictionLog(log_url, spill_dir=spill_dir)  # another log sharing the artifacts folder
    assert other_database.flush() and count_rows(log_url) == (0, 0)
    other_database.close()
    (tmp_path / "down.db").rmdir()
    same_database = PredictionLog(down_url, spill_dir=spill_dir)
    assert same_database.flush() and count_rows(down_url) == (1, 0) and spill_files(spill_dir) == []
    same_database.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://housing:s3cret@db.example/log",
        "mssql+pyodbc://housing:s3cret@db.example/log",
        "oracle://housing:s3cret@db.example/log",
    ],
)
def test_a_database_without_the_duplicate_skipping_insert_is_refused_in_one_sentence(url):
    """Elsewhere a retried batch would hit the primary key, go to the spill and block every later replay:
    refused at once."""
    from housing.errors import UserError
    from housing.store.tables import make_engine

    with pytest.raises(UserError, match="supports SQLite and PostgreSQL URLs only") as refused:
        make_engine(url)
    assert "s3cret" not in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("max_batch_rows", [5_000, 73])
def test_large_flushes_go_in_multi_row_statements_in_order_with_every_value_in_its_column(
    log_url, max_batch_rows
):
    """A flush of 237 rows: four statements of 49 rows (as many as fit under SQLite's oldest limit of 999
    parameters, 20 values a row) and 41 single rows (whatever the batch limit), stored in order, each value in
    its own column; retried, it adds nothing."""
    log = PredictionLog(log_url, flush_interval=0.01, max_batch_rows=max_batch_rows)
    statements: list[int] = []  # rows per INSERT the database executed, as SQLite traces them
    log.engine.dispose()  # connections opened from here on are traced

    @event.listens_for(log.engine, "connect")
    def trace(connection: Any, _record: Any) -> None:
        def inserted(sql: str) -> None:
            if sql.startswith("INSERT INTO predictions"):  # the trace shows the bound values
                statements.append(len(re.findall(r"'r\d{3}'", sql)))

        connection.set_trace_callback(inserted)

    try:
        ids = [f"r{i:03d}" for i in range(237)]
        log.append(rows_for(log, ids))
        assert log.flush() and log.written_rows == 237
        assert len(PREDICTION_COLUMNS) == 20 and statements == [49] * 4 + [1] * 41
        assert stored_ids(log) == ids
        window = read_window(log.engine)
        assert window["MedInc"].tolist() == list(range(1, 238)) and set(window["prediction"]) == {2.0}
        assert set(window["HouseAge"]) == {EXAMPLE_REQUEST["HouseAge"]} and set(window["model_version"]) == {
            "3"
        }
        log.append(rows_for(log, ids, prediction=9.0))  # the whole flush retried after an unclear failure
        assert log.flush() and count_rows(log_url) == (237, 0)
        assert set(read_window(log.engine)["prediction"]) == {2.0}
    finally:
        log.engine.dispose()
