"""Evidence for retraining on a real SQLite prediction log in a temp dir: each district counts once, and what
a retraining run used is never evidence again (what stops label poisoning and a persistent shift from
retraining every round).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine

from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES, TARGET
from housing.store.log_reads import read_window
from housing.store.prediction_log import PredictionLog
from housing.store.retrain_evidence import (
    EVAL_ROLE,
    TRAIN_ROLE,
    base_districts,
    new_evidence,
    record_used_rows,
    trained_rows,
    used_districts,
)
from housing.store.tables import make_engine, prediction_rows

START = datetime(2024, 1, 1, tzinfo=UTC)


def districts(count: int, copies: int = 1) -> np.ndarray:
    """``count`` distinct districts (MedInc 1, 2, 3...), each repeated ``copies`` times in a row."""
    features = np.array([[EXAMPLE_REQUEST[name] for name in FEATURE_NAMES]] * count)
    features[:, FEATURE_NAMES.index("MedInc")] = np.arange(1, count + 1)
    return np.repeat(features, copies, axis=0)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A prediction log holding 30 labelled predictions: 10 districts sent 3 times each."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = PredictionLog(url)
    log.start()
    features = districts(10, copies=3)
    ids = [f"{i:032x}" for i in range(len(features))]
    log.append(
        prediction_rows(
            ids,
            features,
            [2.0] * len(ids),
            model_name="m",
            model_version="1",
            latency_ms=1.0,
            created_at=log.timestamp(START),
        )
    )
    log.flush()
    for i, request_id in enumerate(ids):
        log.record_feedback(request_id, 1.0 + i / 100)
    log.close()
    return make_engine(url)


def labelled_window(engine: Engine) -> pd.DataFrame:
    window = read_window(engine)
    return window[window[TARGET.name].notna()]


def test_each_district_counts_once(engine):
    evidence = new_evidence(labelled_window(engine), set())
    assert (
        evidence.labelled_rows == 30
        and evidence.districts == 10
        and evidence.repeats == 20
        and evidence.already_used == 0
    )
    assert evidence.rows["district"].is_unique


def test_thousands_of_copies_of_one_district_are_one_row_of_evidence():
    frame = pd.DataFrame(districts(1, copies=2000), columns=list(FEATURE_NAMES))
    frame[TARGET.name] = 5.0
    frame["request_id"] = [f"{i:032x}" for i in range(2000)]
    frame["created_at"] = [START + timedelta(seconds=i) for i in range(2000)]
    assert new_evidence(frame, set()).districts == 1


def test_districts_a_run_used_are_not_evidence_again(engine):
    window = labelled_window(engine)
    first = new_evidence(window, used_districts(engine))
    train, judge = first.rows.iloc[:7], first.rows.iloc[7:]
    record_used_rows(engine, "run-a", train, TRAIN_ROLE)
    record_used_rows(engine, "run-a", judge, EVAL_ROLE)
    assert len(used_districts(engine)) == 10
    assert new_evidence(window, used_districts(engine)).districts == 0  # every copy of every district is used
    remembered = trained_rows(engine, "run-a")
    assert sorted(remembered["request_id"]) == sorted(train["request_id"])  # only the rows it trained on
    assert remembered[TARGET.name].notna().all() and trained_rows(engine, "run-b").empty


def test_the_training_split_is_never_evidence(engine):
    window = labelled_window(engine)
    x_train = pd.DataFrame(
        districts(4), columns=list(FEATURE_NAMES)
    )  # districts 1-4 were in the training split
    assert new_evidence(window, base_districts(x_train)).districts == 6


def test_recording_twice_is_idempotent(engine):
    rows = new_evidence(labelled_window(engine), set()).rows
    record_used_rows(engine, "run-a", rows, TRAIN_ROLE)
    record_used_rows(engine, "run-a", rows, TRAIN_ROLE)
    assert len(trained_rows(engine, "run-a")) == 10
