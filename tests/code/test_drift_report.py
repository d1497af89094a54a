"""The Evidently drift and quality report on synthetic in-memory frames, and what the retrain policy makes of
it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from housing.config.settings import Settings
from housing.monitoring.drift_report import PREDICTION, evaluate_window, save_report
from housing.monitoring.record import decision_record
from housing.monitoring.retrain_policy import (
    ALERT,
    INSUFFICIENT_DATA,
    NO_ACTION,
    RETRAIN,
    RetrainThresholds,
    decide,
)
from housing.schema import TARGET
from housing.store.retrain_evidence import new_evidence


def districts(rows: int, seed: int, *, noise: float = 0.3, labelled: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "MedInc": rng.gamma(4.0, 1.0, rows),
            "HouseAge": rng.uniform(1, 52, rows),
            "AveRooms": rng.normal(5.4, 1.0, rows),
            "AveBedrms": rng.normal(1.1, 0.1, rows),
            "Population": rng.gamma(2.0, 700, rows),
            "AveOccup": rng.normal(3.0, 0.5, rows),
            "Latitude": rng.uniform(32.6, 41.9, rows),
            "Longitude": rng.uniform(-124.3, -114.4, rows),
        }
    )
    frame[TARGET.name] = 0.45 * frame["MedInc"] + rng.normal(0, 0.4, rows)
    frame[PREDICTION] = frame[TARGET.name] + rng.normal(0, noise, rows)
    frame.loc[rng.random(rows) >= labelled, TARGET.name] = np.nan
    return frame


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return districts(5000, seed=0)


SETTINGS = Settings(monitor_min_window=500, monitor_min_labels=200)
THRESHOLDS = RetrainThresholds.from_settings(SETTINGS)


def test_no_drift_no_retrain(reference):
    snapshot, figures = evaluate_window(reference, districts(2000, seed=1), SETTINGS)
    assert figures.drift_share == 0.0 and not figures.prediction_drifted
    assert figures.rmse == pytest.approx(0.3, abs=0.03) and figures.labelled_rows == 2000
    assert figures.reference_rmse == pytest.approx(0.3, abs=0.03)
    decision = decide(figures, THRESHOLDS)
    assert decision.action == NO_ACTION and decision.reasons == []
    assert snapshot is not None


def test_clear_drift_retrains(reference):
    current = districts(2000, seed=2)
    current["MedInc"] *= 1.6
    current["AveRooms"] += 2.0
    current["Population"] *= 2.0
    _, figures = evaluate_window(reference, current, SETTINGS)
    assert set(figures.drifted_features) == {"MedInc", "AveRooms", "Population"}
    assert figures.drift_share == pytest.approx(3 / 8)
    decision = decide(figures, THRESHOLDS)
    assert (
        decision.action == RETRAIN
        and "38% of the features drifted (MedInc, AveRooms, Population)" in decision.reasons[0]
    )


def test_error_above_threshold_retrains_without_drift(reference):
    _, figures = evaluate_window(reference, districts(2000, seed=3, noise=0.8), SETTINGS)
    assert figures.drift_share == 0.0 and figures.rmse is not None and figures.rmse > 0.5
    decision = decide(figures, THRESHOLDS)
    assert decision.action == RETRAIN and any(reason.startswith("RMSE") for reason in decision.reasons)
    assert any(reason.startswith("R2") for reason in decision.reasons)  # 1 - 0.8^2 / var < 0.6 too


def test_too_few_labels_decides_on_drift_alone(reference):
    current = districts(2000, seed=4, noise=0.8, labelled=0.05)  # ~100 labels, a large error on them
    _, figures = evaluate_window(reference, current, SETTINGS)
    assert figures.labelled_rows < 200 and figures.rmse is not None and figures.rmse > 0.5
    decision = decide(figures, THRESHOLDS)
    assert decision.action == NO_ACTION
    assert any("decision on drift alone" in note for note in decision.notes)


def test_unlabelled_window_still_measures_drift(reference):
    current = districts(1000, seed=5, labelled=0.0)
    current["HouseAge"] = current["HouseAge"] * 0.3
    current["Latitude"] = 34.0 + current["Latitude"] * 0.01
    _, figures = evaluate_window(reference, current, SETTINGS)
    assert figures.labelled_rows == 0 and figures.rmse is None
    assert set(figures.drifted_features) == {"HouseAge", "Latitude"}
    assert decide(figures, THRESHOLDS).action == ALERT  # drift, but no label to learn from
    assert decide(figures, THRESHOLDS, new_districts=500).action == RETRAIN


def test_empty_window(reference):
    snapshot, figures = evaluate_window(reference, districts(10, seed=6).iloc[0:0], SETTINGS)
    assert snapshot is None and decide(figures, THRESHOLDS).action == INSUFFICIENT_DATA


def test_reports_are_saved_timestamped_and_as_latest(reference, tmp_path):
    current = districts(600, seed=7)
    snapshot, figures = evaluate_window(reference, current, SETTINGS)
    assert snapshot is not None
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    decision = decide(figures, THRESHOLDS)
    evidence = new_evidence(
        current[current[TARGET.name].notna()].assign(request_id="r", created_at=when), set()
    )
    record = decision_record(figures, decision, when, production_version="3", evidence=evidence)
    saved = save_report(snapshot, record, tmp_path / "reports", when)
    assert (saved.html_path.name, saved.json_path.name, saved.decision_path.name) == (
        "monitor_20240506T070809Z.html",
        "monitor_20240506T070809Z.json",
        "decision_20240506T070809Z.json",
    )
    for path in (saved.html_path, saved.json_path, saved.decision_path):
        latest = path.with_name(path.name.replace("20240506T070809Z", "latest"))
        assert latest.read_bytes() == path.read_bytes() and path.stat().st_size > 0
    assert (
        "<html" in saved.html_path.read_text().lower() and json.loads(saved.json_path.read_text())["metrics"]
    )
    written = json.loads(saved.decision_path.read_text())
    assert (
        written["at"] == "2024-05-06T07:08:09+00:00" and written["decision"] == decision.action == NO_ACTION
    )
    assert set(written) == {
        "at",
        "decision",
        "reasons",
        "notes",
        "drift_share",
        "drifted_features",
        "window_rows",
        "labelled_rows",
        "drift_scores",
        "drift_method",
        "rmse",
        "r2",
        "mae",
        "reference_rmse",
        "reference_r2",
        "reference_mae",
        "production_version",
        "new_labelled_districts",
        "labelled_rows_already_used",
        "evidence_needed",
        "labels_to_confirm",
        "challenger",
    }
    assert written["production_version"] == "3" and written["new_labelled_districts"] == 600
    assert written["window_rows"] == 600 and written["drift_scores"].keys() == figures.drift_scores.keys()


def report_tests(snapshot) -> dict[str, tuple[str, str]]:
    """The report's tests: {metric type: (status, description)} of the drift-share, RMSE, R2 and MAE tests."""
    result = snapshot.dict()
    types = {metric["id"]: metric["config"]["type"].rsplit(":", 1)[-1] for metric in result["metrics"]}
    return {
        types[test["metric_config"]["metric_id"]]: (str(test["status"]), test["description"])
        for test in result["tests"]
        if types.get(test["metric_config"]["metric_id"]) in ("DriftedColumnsCount", "RMSE", "R2Score", "MAE")
    }


@pytest.mark.parametrize("shifted", [False, True])
def test_the_report_shows_the_decisions_thresholds_and_agrees_with_it(reference, shifted):
    current = districts(2000, seed=4, noise=0.8 if shifted else 0.3)
    if shifted:
        current["MedInc"] *= 1.6
        current["Population"] *= 2.0
    snapshot, figures = evaluate_window(reference, current, SETTINGS)
    assert snapshot is not None
    decision = decide(figures, THRESHOLDS)
    tests = report_tests(snapshot)
    assert "MAE" not in tests  # the decision does not judge MAE: no threshold is shown for it
    share_status, share_text = tests["DriftedColumnsCount"]
    rmse_status, rmse_text = tests["RMSE"]
    r2_status, r2_text = tests["R2Score"]
    assert str(SETTINGS.drift_share_threshold) in share_text and str(SETTINGS.rmse_threshold) in rmse_text
    assert str(SETTINGS.r2_threshold) in r2_text
    drift_reason = any("features drifted" in reason for reason in decision.reasons)
    assert share_status.endswith("FAIL") == drift_reason == shifted
    assert (
        rmse_status.endswith("FAIL")
        == any(reason.startswith("RMSE") for reason in decision.reasons)
        == shifted
    )
    assert (
        r2_status.endswith("FAIL") == any(reason.startswith("R2") for reason in decision.reasons) == shifted
    )
    html = snapshot.get_html_str(as_iframe=False)
    assert (
        f"Dataset drift detection threshold is {SETTINGS.drift_share_threshold}" in html
        and "threshold is 0.5" not in html
    )
