"""What keeps the prediction log from stalling or filling the disk, on real SQLite files in a temp dir: a row
the database refuses goes to the dead-letter file and the rows after it are stored; the free-space floor;
retention that keeps what retraining used; a replay that leaves the writer its turn."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pandas as pd
from sqlalchemy import text

from housing.store.disk_floor import DiskFloor, free_mb
from housing.store.log_reads import count_rows
from housing.store.prediction_log import PredictionLog
from housing.store.retention import prune_log
from housing.store.retrain_evidence import TRAIN_ROLE, record_used_rows
from housing.store.tables import create_tables
from tests.helpers import START, rows_for


def stored_ids(log: PredictionLog) -> list[str]:
    with log.engine.connect() as connection:
        return list(
            connection.execute(text("select request_id from predictions order by request_id")).scalars()
        )


def test_a_row_the_database_refuses_goes_to_the_dead_letter_file_and_the_others_are_stored(tmp_path):
    spill = tmp_path / "spill"
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", spill_dir=spill, dead_letter_tries=3)
    create_tables(log.engine)
    poison = rows_for(log, ["b"], prediction=math.nan)  # NOT NULL refuses a NaN prediction on SQLite
    log.append(rows_for(log, ["a"]) + poison + rows_for(log, ["c", "d"], minutes=1))
    assert log.flush() is False  # first refusal: tried again later, the good rows already in
    assert stored_ids(log) == ["a", "c", "d"]
    log.append(rows_for(log, ["e"], minutes=2))  # rows keep coming meanwhile
    assert log.flush() is False
    assert log.flush() is True  # third refusal: the row leaves for the dead-letter file
    assert stored_ids(log) == ["a", "c", "d", "e"] and log.pending_rows == 0
    [dead] = spill.glob("dead-letters-*.jsonl")
    assert [json.loads(line)[0] for line in dead.read_text().splitlines()] == ["b"]
    assert oct(dead.stat().st_mode & 0o777) == "0o600"
    assert log.status().dead_letter_rows == 1
    log.close()


def test_below_the_free_space_floor_predictions_are_refused_with_the_reason_and_come_back(tmp_path):
    free = free_mb(tmp_path)
    floor = DiskFloor([tmp_path / "spill-not-yet-made"], min_free_mb=free * 10)
    refusal = floor.refusal()
    assert refusal is not None and "below the floor" in refusal and "HOUSING_LOG_MIN_FREE_MB" in refusal
    assert str(tmp_path) not in refusal  # no server path for an anonymous client
    floor.min_free_mb, floor._next_check = 1.0, 0.0  # space returns: the next look lets predictions through
    assert floor.refusal() is None
    assert DiskFloor([tmp_path], min_free_mb=0).refusal() is None  # 0: no floor


def test_retention_deletes_old_rows_and_their_labels_but_keeps_what_a_retrain_used(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(log.engine)
    log.append(rows_for(log, ["old1", "old2", "used"]) + rows_for(log, ["new"], minutes=60 * 24 * 100))
    assert log.flush()
    for request_id in ("old1", "used", "new"):
        assert log.record_feedback(request_id, 2.5) == "created"
    record_used_rows(
        log.engine,
        "run-1",
        pd.DataFrame(
            {
                "request_id": ["used"],
                **{
                    name: [value]
                    for name, value in zip(
                        (
                            "MedInc",
                            "HouseAge",
                            "AveRooms",
                            "AveBedrms",
                            "Population",
                            "AveOccup",
                            "Latitude",
                            "Longitude",
                        ),
                        (3.0,) * 8,
                        strict=True,
                    )
                },
            }
        ),
        TRAIN_ROLE,
    )
    pruned = prune_log(log.engine, START + timedelta(days=50))
    assert (pruned.predictions, pruned.labels) == (2, 1)
    assert stored_ids(log) == ["new", "used"]
    assert count_rows(log.url) == (2, 2)
    log.close()


def test_a_replay_returns_to_the_writer_after_its_share_of_rows(tmp_path, monkeypatch):
    monkeypatch.setattr("housing.store.prediction_log.REPLAY_ROWS_PER_FLUSH", 10)
    path = tmp_path / "log.db"
    path.mkdir()  # the database cannot be opened: everything spills
    log = PredictionLog(f"sqlite:///{path}", max_buffer_rows=5, spill_dir=tmp_path / "spill")
    log.append(rows_for(log, [f"r{i:02d}" for i in range(25)]))
    assert log.flush() is False and log.status().spilled_rows == 25
    path.rmdir()
    replayed = []
    for _ in range(3):  # each flush replays at most 10 spilled rows, then returns
        assert log.flush()
        replayed.append(len(stored_ids(log)))
    assert replayed == [10, 20, 25] and not log.pending.spilling
    log.close()
