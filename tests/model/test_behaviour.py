"""Behaviour of the trained production model on the real test split (Made-With-ML style checks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from housing.artifacts import load_pickle
from housing.registry import load_model

pytestmark = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""The trained model's behaviour doesn't depend on the store it is registered in: the SQLite run only."""


@pytest.fixture(scope="module")
def production(pipeline_run):
    return load_model("models:/CaliforniaHousing@production", pipeline_run.tracking_uri)


@pytest.fixture(scope="module")
def held_out_split(pipeline_run) -> tuple[pd.DataFrame, pd.Series]:
    split_dir = pipeline_run.artifacts_dir / "split"
    return load_pickle(split_dir / "X_test.pkl"), load_pickle(split_dir / "y_test.pkl")


def test_predictions_are_plausible_for_every_test_row(production, held_out_split):
    x_test, _ = held_out_split
    predictions = production.predict(x_test)
    assert np.isfinite(predictions).all()
    assert predictions.min() > 0.0 and predictions.max() < 7.0  # $0 - $700k for 1990 districts (target capped at 5)


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


def test_production_beats_the_seeds_gradient_boosting(pipeline_run):
    client = MlflowClient(pipeline_run.tracking_uri)
    versions = {v.tags["candidate"]: v for v in client.search_model_versions("name = 'CaliforniaHousing'")}
    production = client.get_model_version_by_alias("CaliforniaHousing", "production")
    seed_gb = versions["gradient_boosting"]
    assert float(production.tags["eval_r2"]) > float(seed_gb.tags["eval_r2"])
    assert float(production.tags["eval_rmse"]) < float(seed_gb.tags["eval_rmse"])
