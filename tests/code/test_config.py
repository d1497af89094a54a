"""The one settings object: defaults, environment and flag overrides (no dataset, no store: nothing is
read). docs/settings.md against every default: tests/code/test_docs.py."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from housing.config.settings import PROJECT_DIR, get_settings


def test_defaults(monkeypatch):
    for name in [name for name in os.environ if name.startswith("HOUSING_")] + ["MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(name, raising=False)
    settings = get_settings()
    assert settings.data_source is None  # scikit-learn's downloader; nothing is downloaded or read here
    assert settings.tracking_uri == f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
    assert settings.model_name == "CaliforniaHousing"
    assert settings.experiment_name == "California-Housing-Regression"
    assert (settings.staging_r2_threshold, settings.production_r2_threshold) == (0.7, 0.75)
    assert settings.dataset_path == PROJECT_DIR / "artifacts" / "data" / "california_housing.csv"


def test_mlflow_http_retries_default_to_two_so_a_stage_fails_in_seconds(monkeypatch):
    """docs/settings.md: MLflow's own default retries 7 times with backoff (minutes); the project sets 2
    unless the environment says otherwise (monkeypatch restores the process environment after the test)."""
    from housing.registry import tracking

    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)
    tracking.quiet_mlflow()
    assert (
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"],
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"],
    ) == ("2", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    tracking.quiet_mlflow()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"  # the environment wins


def test_environment_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("HOUSING_ARTIFACTS_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("HOUSING_PRODUCTION_R2_THRESHOLD", "0.8")
    settings = get_settings(production_r2_threshold=0.9, random_state=None)
    assert settings.tracking_uri == f"sqlite:///{tmp_path}/x.db"
    assert settings.split_dir == tmp_path / "a" / "split"
    assert settings.production_r2_threshold == 0.9  # the flag wins over the environment
    assert settings.random_state == 42  # None means "flag not given"
    assert settings.mlflow_artifact_location == (tmp_path / "mlruns").as_uri()


def test_relative_sqlite_store_keeps_artifacts_beside_it(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert (
        get_settings(tracking_uri="sqlite:///rel.db").mlflow_artifact_location
        == (Path(tmp_path) / "mlruns").as_uri()
    )
    assert get_settings(tracking_uri="http://server:5000").mlflow_artifact_location is None


def test_invalid_values_are_refused():
    with pytest.raises(ValidationError):
        get_settings(test_size=1.5)
    with pytest.raises(ValidationError):
        get_settings(outlier_quantiles=(0.9, 0.1))


def test_empty_data_source_means_the_downloader(monkeypatch):
    monkeypatch.setenv("HOUSING_DATA_SOURCE", "")
    assert get_settings().data_source is None
