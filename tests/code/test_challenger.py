"""Champion and challenger without a server: the canary's stable routing, the shadow scorer on a real SQLite log
(both predictions in one row, a failing or slow challenger never blocks or loses a row), the log's in-place
migration, the live evidence read, and the live verdict's every branch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from housing.registry.live_policy import confidence_sequence, decide_challenger, labels_needed, sequence_radius
from housing.registry.live_verdict import first_scored, paired_requests
from housing.registry.promotion_policy import PromotionDecision, for_shadow_mode
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES
from housing.serving.model_service import LoadedModel
from housing.serving.prometheus import Metrics
from housing.serving.shadow import ServedBatch, ShadowScorer, routes_to_challenger, routing_bucket
from housing.store.prediction_log import PredictionLog, prediction_rows
from housing.store.spill import row_restorer
from housing.store.tables import PREDICTION_COLUMNS, create_tables, make_engine


def model(version: str, predict: Callable[[np.ndarray], np.ndarray], alias: str = "production") -> LoadedModel:
    """A loaded model whose predict is ``predict`` (the compiled-path slot: no scikit-learn pipeline needed)."""
    return LoadedModel(pipeline=None, name="M", version=version, alias=alias, run_id=None, metrics={},
                       loaded_at=datetime.now(UTC), fast_predict=predict)


def features(count: int, start: int = 1) -> np.ndarray:
    """``count`` different districts: MedInc numbers them."""
    rows = np.array([[EXAMPLE_REQUEST[name] for name in FEATURE_NAMES]] * count, dtype=np.float64)
    rows[:, 0] = np.arange(start, start + count) / 10
    return rows


CHAMPION = model("3", lambda x: x[:, 0] * 2)
CHALLENGER = model("7", lambda x: x[:, 0] * 3, alias="staging")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[PredictionLog]:
    opened = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", flush_interval=0.01)
    create_tables(opened.engine)
    yield opened
    opened.engine.dispose()


def served(log: PredictionLog, ids: list[str], by: LoadedModel, start: int = 1) -> ServedBatch:
    x = features(len(ids), start)
    return ServedBatch(ids, x, by.predict(x).tolist(), by, by.alias, 1.0, log.timestamp(datetime.now(UTC)))


def stored(log: PredictionLog) -> list[tuple[Any, ...]]:
    with log.engine.connect() as connection:
        return list(connection.execute(text(
            "select request_id, model_version, served_alias, prediction, shadow_prediction, shadow_model_version "
            "from predictions order by request_id")))


# --- canary routing -----------------------------------------------------------------------------------------------
def test_the_same_key_always_gets_the_same_model_and_the_share_is_the_setting():
    keys = [f"client-{i}".encode() for i in range(20_000)]
    chosen = [routes_to_challenger(key, 10) for key in keys]
    assert 0.09 < np.mean(chosen) < 0.11
    assert chosen == [routes_to_challenger(key, 10) for key in keys]  # stable: a pure function of the key
    assert routing_bucket(b"client-1") == routing_bucket(b"client-1")
    assert not any(routes_to_challenger(key, 0) for key in keys[:1000])
    assert all(routes_to_challenger(key, 100) for key in keys[:1000])
    inside_ten = {key for key, picked in zip(keys, chosen, strict=True) if picked}
    assert inside_ten <= {key for key in keys if routes_to_challenger(key, 20)}  # raising the share keeps the canary's clients


# --- shadow scorer --------------------------------------------------------------------------------------------------
def scorer(log: PredictionLog, other: Callable[[str], LoadedModel | None], **kwargs: Any) -> tuple[ShadowScorer, Metrics]:
    metrics = Metrics()
    return ShadowScorer(log, metrics, other, **kwargs), metrics


def test_every_row_is_logged_with_both_predictions_either_model_answering(log):
    shadow, metrics = scorer(log, lambda alias: CHALLENGER if alias == "production" else CHAMPION)
    assert shadow.submit(served(log, ["a", "b"], CHAMPION))
    assert shadow.submit(served(log, ["c"], CHALLENGER, start=5))  # a canary request: the champion is its shadow
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

    shadow, metrics = scorer(log, lambda alias: model("9", broken, alias="staging"))
    shadow.submit(served(log, ["a", "b"], CHAMPION))
    assert shadow.drain() == 2
    assert log.flush()
    assert [row[4:] for row in stored(log)] == [(None, None), (None, None)]
    assert [row[3] for row in stored(log)] == [pytest.approx(0.2), pytest.approx(0.4)]
    assert metrics.shadow_failures.labels("error")._value.get() == 2


def test_a_wrong_shaped_shadow_answer_is_a_failure_not_a_misaligned_row(log):
    shadow, metrics = scorer(log, lambda alias: model("9", lambda x: np.zeros(len(x) + 1), alias="staging"))
    shadow.submit(served(log, ["a", "b"], CHAMPION))
    shadow.drain()
    log.flush()
    assert [row[4] for row in stored(log)] == [None, None]
    assert metrics.shadow_failures.labels("error")._value.get() == 2


def test_a_full_backlog_refuses_so_the_caller_logs_directly(log):
    shadow, _ = scorer(log, lambda alias: CHALLENGER, max_rows=3)
    assert shadow.submit(served(log, ["a", "b"], CHAMPION))
    assert not shadow.submit(served(log, ["c", "d"], CHAMPION))  # nothing taken
    assert shadow.backlog_rows == 2
    shadow.drain()
    assert shadow.backlog_rows == 0
    assert shadow.submit(served(log, ["c", "d"], CHAMPION))


def test_rows_the_log_refuses_are_kept_and_appended_later(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'full.db'}", max_buffer_rows=2, spill_dir=None)  # full at 2 rows, nowhere to spill
    create_tables(log.engine)
    log.append(prediction_rows(["x", "y"], features(2, start=50), [1.0, 1.0], model_name="M", model_version="3", latency_ms=1.0,
                               created_at=log.timestamp(datetime.now(UTC))))
    shadow, _ = scorer(log, lambda alias: CHALLENGER)
    shadow.submit(served(log, ["a", "b"], CHAMPION))
    assert shadow.drain() == 0  # the log is full
    assert shadow.backlog_rows == 2  # kept, and still counted: the backlog cap keeps holding
    assert log.flush()  # the log writes its rows and has room again
    assert shadow.drain() == 2
    assert log.flush()
    assert [row[0] for row in stored(log)] == ["a", "b", "x", "y"]
    assert stored(log)[0][4] == pytest.approx(0.3)  # scored once, before the refusal, and kept
    log.engine.dispose()


def test_close_hands_every_waiting_row_to_the_log(log):
    shadow, _ = scorer(log, lambda alias: CHALLENGER, interval=60)
    shadow.start()
    shadow.submit(served(log, ["a"], CHAMPION))
    shadow.close()
    log.flush()
    assert [row[0] for row in stored(log)] == ["a"]


def test_the_thread_logs_without_being_asked(log):
    shadow, _ = scorer(log, lambda alias: CHALLENGER, interval=0.01)
    shadow.start()
    try:
        shadow.submit(served(log, ["a"], CHAMPION))
        for _ in range(500):
            if log.pending_rows:
                break
            time.sleep(0.01)
        assert log.pending_rows == 1
    finally:
        shadow.close()


# --- the log's migration --------------------------------------------------------------------------------------------
OLD_SCHEMA = ("CREATE TABLE predictions (request_id VARCHAR(32) PRIMARY KEY, created_at DATETIME NOT NULL, "
              + ", ".join(f'"{name}" FLOAT NOT NULL' for name in FEATURE_NAMES)
              + ", prediction FLOAT NOT NULL, model_name VARCHAR(200) NOT NULL, model_version VARCHAR(20) NOT NULL, "
              "latency_ms FLOAT NOT NULL)")


def test_an_older_log_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    values = ", ".join(["'old'", "'2024-01-01 00:00:00.000000'", *["1.0"] * len(FEATURE_NAMES), "2.0", "'M'", "'1'", "1.5"])
    with engine.begin() as connection:
        connection.execute(text(OLD_SCHEMA))
        connection.execute(text(f"INSERT INTO predictions VALUES ({values})"))
    create_tables(engine)
    create_tables(engine)  # twice (another process): nothing to add, no error
    log = PredictionLog(url)
    log.append(prediction_rows(["new"], features(1), [2.5], model_name="M", model_version="2", latency_ms=1.0,
                               created_at=log.timestamp(datetime.now(UTC)), served_alias="production", shadow=[2.7], shadow_version="3"))
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


# --- live evidence ------------------------------------------------------------------------------------------------
def label(log: PredictionLog, request_id: str, actual: float) -> None:
    assert log.record_feedback(request_id, actual) == "created"


def test_paired_requests_reads_both_arms_once_per_district(log):
    shadow, _ = scorer(log, lambda alias: CHALLENGER if alias == "production" else CHAMPION)
    shadow.submit(served(log, ["a", "b"], CHAMPION))  # districts 1 and 2
    shadow.submit(served(log, ["c"], CHALLENGER, start=3))  # district 3, canary
    shadow.submit(served(log, ["d"], CHAMPION, start=1))  # district 1 again: no new evidence
    shadow.drain()
    log.append(prediction_rows(["e"], features(1, start=4), [9.0], model_name="M", model_version="3", latency_ms=1.0,
                               created_at=log.timestamp(datetime.now(UTC))))  # no challenger then: not paired
    log.flush()
    for request_id in "abcde":
        label(log, request_id, 1.0)
    pairs = paired_requests(log.engine, "3", "7")
    assert len(pairs) == 3
    assert pairs["champion"].tolist() == pytest.approx([0.2, 0.4, 0.6])
    assert pairs["challenger"].tolist() == pytest.approx([0.3, 0.6, 0.9])
    assert paired_requests(log.engine, "3", "8").empty
    assert first_scored(log.engine, "7") is not None
    assert first_scored(log.engine, "8") is None


# --- the live verdict -------------------------------------------------------------------------------------------------
RULE: dict[str, Any] = {"champion": "3", "challenger": "7", "min_rows": 100, "confidence": 0.95, "max_wait_hours": 72.0}


def errors(rng: np.random.Generator, rows: int, challenger_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Squared errors of both models on the same rows: shared difficulty, the challenger's scaled."""
    base = rng.gamma(1.0, 0.15, rows)
    return base * rng.uniform(0.9, 1.1, rows), base * challenger_scale * rng.uniform(0.9, 1.1, rows)


def test_a_clearly_better_challenger_is_promoted_and_a_clearly_worse_one_dropped():
    rng = np.random.default_rng(1)
    verdict = decide_challenger(*errors(rng, 300, 0.7), waited_hours=1.0, **RULE)
    assert verdict.action == "promote" and verdict.evidence is not None and verdict.evidence.low > 0
    verdict = decide_challenger(*errors(rng, 300, 1.8), waited_hours=1.0, **RULE)
    assert verdict.action == "reject" and "worse beyond noise" in verdict.message


def test_too_few_labels_waits_and_says_how_many_more_then_expires():
    rng = np.random.default_rng(2)
    verdict = decide_challenger(*errors(rng, 40, 0.5), waited_hours=1.0, **RULE)
    assert (verdict.action, verdict.more_needed) == ("wait", 60)
    assert "needs 60 more labelled requests" in verdict.message
    assert decide_challenger(*errors(rng, 40, 0.5), waited_hours=None, **RULE).action == "wait"  # the wait has not started
    expired = decide_challenger(*errors(rng, 40, 0.5), waited_hours=73.0, **RULE)
    assert expired.action == "expire"


def test_an_indistinguishable_challenger_waits_with_an_estimate_then_expires():
    rng = np.random.default_rng(3)
    champion_se, challenger_se = errors(rng, 200, 1.0)
    verdict = decide_challenger(champion_se, challenger_se, waited_hours=1.0, **RULE)
    assert verdict.action == "wait" and verdict.more_needed is not None and verdict.more_needed > 0
    assert f"needs about {verdict.more_needed:,} more labelled requests" in verdict.message
    assert decide_challenger(champion_se, challenger_se, waited_hours=100.0, **RULE).action == "expire"
    identical = decide_challenger(champion_se, champion_se, waited_hours=1.0, **RULE)
    assert identical.action == "wait" and identical.more_needed is None and "no number of labelled requests" in identical.message


def test_labels_needed_is_the_first_count_whose_time_uniform_interval_clears_zero():
    gain = np.array([0.1, 0.3] * 50)  # mean 0.2, sd ~0.1005: already clear
    assert labels_needed(gain, 0.95, 100) == 1  # at least one more
    noisy = np.array([1.0, -0.9] * 50)  # mean 0.05, sd ~0.955
    needed = labels_needed(noisy, 0.95, 100)
    assert needed is not None
    spread = float(np.std(noisy, ddof=1))
    total = len(noisy) + needed
    assert sequence_radius(total, spread, 0.95) < 0.05 <= sequence_radius(total - 1, spread, 0.95)
    assert total > (1.96 * spread / 0.05) ** 2  # wider than the one-look interval, which would need ~1,400
    assert labels_needed(np.array([0.1]), 0.95, 100) == 99


def test_the_time_uniform_interval_is_wider_than_one_look_and_shrinks():
    assert sequence_radius(500, 1.0, 0.95) > 1.96 / np.sqrt(500)
    radii = [sequence_radius(n, 1.0, 0.95) for n in (100, 1_000, 10_000, 100_000)]
    assert radii == sorted(radii, reverse=True) and radii[-1] < 0.02
    evidence = confidence_sequence(np.full(200, 0.5), np.full(200, 0.5), 0.95)  # identical models
    assert (evidence.mean_gain, evidence.low, evidence.high) == (0.0, 0.0, 0.0) and not evidence.beyond_noise


def test_shadow_mode_keeps_production_and_leaves_the_winner_in_staging():
    direct = PromotionDecision("9", "9", True, True, ("staging message", "'production' -> version 9"))
    shadow = for_shadow_mode(direct, "3", "staging")
    assert (shadow.staging_version, shadow.production_version, shadow.move_staging, shadow.move_production) == ("9", "3", True, False)
    assert "judged on live traffic" in shadow.messages[-1]
    assert for_shadow_mode(direct, None, "staging") == direct  # no production yet: the first model goes straight in
    unchanged = PromotionDecision("9", "3", True, False, ("s", "production unchanged"))
    assert for_shadow_mode(unchanged, "3", "staging") == unchanged
