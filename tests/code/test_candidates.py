"""Candidate configuration and the one definition of the metrics."""

import math

import numpy as np
import pytest

from housing.config.settings import get_settings
from housing.errors import UserError
from housing.registry.model_files import untrusted_types
from housing.training.candidates import CandidateSpec, build_pipeline, load_candidate_specs
from housing.training.scoring import regression_metrics
from tests.helpers import tiny_dataset


def test_metrics_match_their_definitions():
    y_true, y_pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 4.5])
    metrics = regression_metrics(y_true, y_pred)
    errors = y_true - y_pred
    assert metrics["mse"] == pytest.approx(np.mean(errors**2))
    assert metrics["rmse"] == pytest.approx(math.sqrt(np.mean(errors**2)))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert metrics["r2"] == pytest.approx(1 - np.sum(errors**2) / np.sum((y_true - y_true.mean()) ** 2))


def test_weighted_metrics_ignore_zero_weight_rows():
    y_true, y_pred = np.array([1.0, 2.0, 100.0]), np.array([1.0, 2.5, 0.0])
    weighted = regression_metrics(y_true, y_pred, sample_weight=np.array([1.0, 1.0, 0.0]))
    assert weighted["rmse"] == pytest.approx(math.sqrt(0.25 / 2))


def test_the_original_reports_candidates_keep_its_hyperparameters():
    specs = {spec.name: spec for spec in load_candidate_specs(get_settings().candidates_path)}
    assert specs["random_forest"].params | {"n_jobs": 1} == {
        "n_estimators": 200,
        "max_depth": 15,
        "min_samples_split": 5,
        "random_state": 42,
        "n_jobs": 1,
    }
    assert specs["gradient_boosting"].params == {
        "n_estimators": 500,
        "learning_rate": 0.05,
        "max_depth": 5,
        "subsample": 0.8,
        "random_state": 42,
    }
    assert {"linear_regression", "hist_gradient_boosting"} <= set(specs)


def test_estimator_scale_shrinks_tree_counts_only():
    spec = CandidateSpec("rf", "RandomForestRegressor", {"n_estimators": 200, "max_depth": 15})
    assert spec.scaled_params(0.1) == {"n_estimators": 20, "max_depth": 15}
    assert spec.scaled_params(0.001)["n_estimators"] == 1


def test_pipeline_is_outliers_scaler_estimator():
    spec = CandidateSpec("lr", "LinearRegression")
    assert [
        name for name, _ in build_pipeline(spec, outlier_quantiles=(0.01, 0.99), estimator_scale=1).steps
    ] == ["outliers", "scaler", "model"]


def test_bad_candidate_files_are_one_sentence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("evil:\n  estimator: os.system\n")
    with pytest.raises(UserError, match="unknown estimator 'os.system'"):
        load_candidate_specs(path)
    with pytest.raises(UserError, match="unknown candidate"):
        load_candidate_specs(get_settings().candidates_path, ["nope"])
    with pytest.raises(UserError, match="does not exist"):
        load_candidate_specs(tmp_path / "missing.yaml")


def test_every_candidate_holds_only_trusted_types():
    """A logged model must load back with SKOPS_TRUSTED_TYPES; this catches a new estimator kind early."""
    frame = tiny_dataset(300)
    frame["Latitude"] = np.linspace(33, 41, 300)
    x, y = frame.drop(columns="MedHouseVal"), frame["MedHouseVal"]
    for spec in load_candidate_specs(get_settings().candidates_path):
        pipeline = build_pipeline(spec, outlier_quantiles=(0.01, 0.99), estimator_scale=0.02).fit(x, y)
        assert untrusted_types(pipeline) == [], spec.name
