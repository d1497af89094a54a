"""Behaviour of the trained production model on the real test split (Made-With-ML style checks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.metrics import r2_score, root_mean_squared_error

from housing.data.artifacts import load_pickle
from tests.conftest import TEST_ESTIMATOR_SCALE

pytestmark = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""The trained model's behaviour doesn't depend on the store it is registered in: the SQLite run only."""


@pytest.fixture(scope="module")
def production(pipeline_run):
    return pipeline_run.load_version()


@pytest.fixture(scope="module")
def held_out_split(pipeline_run) -> tuple[pd.DataFrame, pd.Series]:
    split_dir = pipeline_run.artifacts_dir / "split"
    return load_pickle(split_dir / "X_test.pkl"), load_pickle(split_dir / "y_test.pkl")


def test_predictions_are_plausible_for_every_test_row(production, held_out_split):
    x_test, _ = held_out_split
    predictions = production.predict(x_test)
    assert np.isfinite(predictions).all()
    assert (
        predictions.min() > 0.0 and predictions.max() < 7.0
    )  # $0 - $700k for 1990 districts (target capped at 5)


def test_higher_income_never_lowers_the_average_prediction(production, held_out_split):
    x_test, _ = held_out_split
    districts = x_test.sample(500, random_state=0)
    averages = []
    for factor in (0.6, 0.8, 1.0, 1.2, 1.5, 2.0):
        richer = districts.assign(MedInc=(districts["MedInc"] * factor).clip(upper=25.0))
        averages.append(production.predict(richer).mean())
    assert all(later >= earlier for earlier, later in zip(averages, averages[1:], strict=False)), averages
    assert averages[-1] > averages[0] + 0.5  # and it matters


def test_tiny_feature_noise_changes_predictions_only_a_little(production, held_out_split):
    x_test, _ = held_out_split
    rng = np.random.default_rng(0)
    noisy = x_test.copy()
    for column in ("MedInc", "HouseAge", "AveRooms", "AveBedrms", "Population", "AveOccup"):
        noisy[column] = noisy[column] * (1 + rng.uniform(-0.001, 0.001, len(noisy)))
    noisy["Latitude"] += rng.uniform(-0.0005, 0.0005, len(noisy))  # ~50 m
    noisy["Longitude"] += rng.uniform(-0.0005, 0.0005, len(noisy))
    change = np.abs(production.predict(noisy) - production.predict(x_test))
    assert np.median(change) < 0.01  # < $1,000
    assert np.quantile(change, 0.99) < 0.25


ORIGINAL_GRADIENT_BOOSTING = {
    "n_estimators": 500,
    "learning_rate": 0.05,
    "max_depth": 5,
    "subsample": 0.8,
    "random_state": 42,
}
"""The original report's best model, as it configured it; written out here, independent of
candidates.yaml, so that editing the project's own gradient_boosting candidate cannot weaken the baseline."""

BEATS_BY_R2 = 0.01
"""Production must beat the original report's model by more than a preprocessing detail moves it: the
project's own gradient_boosting candidate (the same settings behind the outlier rule and scaler) scores 0.003
R2 above the bare original model on this split, so a plain ">" would let that model pass as an improvement."""


def test_production_beats_an_independently_trained_original_gradient_boosting(
    production, held_out_split, pipeline_run
):
    """Fitted here on the same training split, scored with production on the same test split: whichever
    candidate wins promotion, production must beat the original report's best model. That model gets the
    tier's tree scale (TEST_ESTIMATOR_SCALE, as production was trained with): like for like, and ~7 s instead
    of ~25 s."""
    split_dir = pipeline_run.artifacts_dir / "split"
    x_train, y_train = load_pickle(split_dir / "X_train.pkl"), load_pickle(split_dir / "y_train.pkl")
    x_test, y_test = held_out_split
    params = ORIGINAL_GRADIENT_BOOSTING | {
        "n_estimators": round(ORIGINAL_GRADIENT_BOOSTING["n_estimators"] * float(TEST_ESTIMATOR_SCALE))
    }
    original = GradientBoostingRegressor(**params).fit(
        x_train.to_numpy(dtype=np.float64), y_train.to_numpy(dtype=np.float64)
    )
    original_predictions = original.predict(x_test.to_numpy(dtype=np.float64))
    production_predictions = production.predict(x_test)
    original_r2, production_r2 = (
        r2_score(y_test, original_predictions),
        r2_score(y_test, production_predictions),
    )
    original_rmse, production_rmse = (
        root_mean_squared_error(y_test, original_predictions),
        root_mean_squared_error(y_test, production_predictions),
    )
    figures = (
        f"production R2 {production_r2:.4f} RMSE {production_rmse:.4f}; original R2 {original_r2:.4f} RMSE"
        f" {original_rmse:.4f}"
    )
    assert original_r2 > 0.75, (
        f"the original baseline is implausibly weak, so beating it proves nothing: {figures}"
    )
    assert production_r2 > original_r2 + BEATS_BY_R2 and production_rmse < original_rmse, figures
