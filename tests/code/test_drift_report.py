"""The monitor's drift measurement and decision on in-memory frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from housing.config import Settings
from housing.monitoring import (
    INSUFFICIENT_DATA,
    NO_ACTION,
    PREDICTION,
    RETRAIN,
    WindowFigures,
    decide,
    evaluate_window,
)
from housing.schema import FEATURE_NAMES, TARGET


def districts(rows: int, seed: int, *, noise: float = 0.3, labelled: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "MedInc": rng.gamma(4.0, 1.0, rows), "HouseAge": rng.uniform(1, 52, rows), "AveRooms": rng.normal(5.4, 1.0, rows),
        "AveBedrms": rng.normal(1.1, 0.1, rows), "Population": rng.gamma(2.0, 700, rows), "AveOccup": rng.normal(3.0, 0.5, rows),
        "Latitude": rng.uniform(32.6, 41.9, rows), "Longitude": rng.uniform(-124.3, -114.4, rows),
    })
    frame[TARGET.name] = 0.45 * frame["MedInc"] + rng.normal(0, 0.4, rows)
    frame[PREDICTION] = frame[TARGET.name] + rng.normal(0, noise, rows)
    frame.loc[rng.random(rows) >= labelled, TARGET.name] = np.nan
    return frame


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return districts(5000, seed=0)


SETTINGS = Settings(monitor_min_window=500, monitor_min_labels=200)


def test_no_drift_no_retrain(reference):
    snapshot, figures = evaluate_window(reference, districts(2000, seed=1), SETTINGS)
    assert figures.drift_share == 0.0 and not figures.prediction_drifted
    assert figures.rmse == pytest.approx(0.3, abs=0.03) and figures.labelled_rows == 2000
    assert figures.reference_rmse == pytest.approx(0.3, abs=0.03)
    decision = decide(figures, SETTINGS)
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
    decision = decide(figures, SETTINGS)
    assert decision.action == RETRAIN and "38% of the features drifted (MedInc, AveRooms, Population)" in decision.reasons[0]


def test_error_above_threshold_retrains_without_drift(reference):
    _, figures = evaluate_window(reference, districts(2000, seed=3, noise=0.8), SETTINGS)
    assert figures.drift_share == 0.0 and figures.rmse > 0.5
    decision = decide(figures, SETTINGS)
    assert decision.action == RETRAIN and any(reason.startswith("RMSE") for reason in decision.reasons)
    assert any(reason.startswith("R2") for reason in decision.reasons)  # 1 - 0.8^2 / var < 0.6 too


def test_too_few_labels_decides_on_drift_alone(reference):
    current = districts(2000, seed=4, noise=0.8, labelled=0.05)  # ~100 labels, a large error on them
    _, figures = evaluate_window(reference, current, SETTINGS)
    assert figures.labelled_rows < 200 and figures.rmse > 0.5
    decision = decide(figures, SETTINGS)
    assert decision.action == NO_ACTION
    assert any("decision on drift alone" in note for note in decision.notes)


def test_unlabelled_window_still_measures_drift(reference):
    current = districts(1000, seed=5, labelled=0.0)
    current["HouseAge"] = current["HouseAge"] * 0.3
    current["Latitude"] = 34.0 + current["Latitude"] * 0.01
    _, figures = evaluate_window(reference, current, SETTINGS)
    assert figures.labelled_rows == 0 and figures.rmse is None
    assert set(figures.drifted_features) == {"HouseAge", "Latitude"}
    assert decide(figures, SETTINGS).action == RETRAIN


def test_small_window_is_not_judged():
    figures = WindowFigures(window_rows=120, labelled_rows=120, drift_scores={"MedInc": 0.9}, drifted={name: True for name in FEATURE_NAMES},
                            drift_method="wasserstein", rmse=2.0, r2=-1.0)
    decision = decide(figures, SETTINGS)
    assert decision.action == INSUFFICIENT_DATA and "500 are needed" in decision.notes[0]


def test_empty_window(reference):
    snapshot, figures = evaluate_window(reference, districts(10, seed=6).iloc[0:0], SETTINGS)
    assert snapshot is None and decide(figures, SETTINGS).action == INSUFFICIENT_DATA
