"""The one settings object: defaults, environment and flag overrides (no dataset, no store: nothing is
read)."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from housing.config import PROJECT_DIR, get_settings


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


def test_the_readme_settings_table_is_the_defaults(monkeypatch):
    """Every default the README's settings table gives, row by row (a changed default must change the
    README)."""
    for name in [name for name in os.environ if name.startswith("HOUSING_")] + ["MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(name, raising=False)
    s = get_settings()
    artifacts = PROJECT_DIR / "artifacts"
    table = {
        "artifacts": (s.artifacts_dir, artifacts),
        "split": ((s.random_state, s.test_size), (42, 0.2)),
        "CV folds, processes": ((s.cv_folds, s.n_jobs), (2, 2)),
        "tree-count multiplier": (s.estimator_scale, 1.0),
        "prediction log": (
            (s.log_database_url, s.log_flush_interval),
            (f"sqlite:///{artifacts / 'prediction_log.db'}", 0.2),
        ),
        "serving": ((s.max_batch_rows, s.reload_interval, s.admin_token), (10_000, 10.0, None)),
        "labellers' token": (
            (s.feedback_token, s.feedback_token_path),
            (None, artifacts / "secrets" / "feedback_token"),
        ),
        "open feedback": (s.unsafe_open_feedback, False),
        "monitor": ((s.monitor_window, s.monitor_min_window, s.monitor_min_labels), (2_000, 500, 200)),
        "decision": ((s.drift_share_threshold, s.rmse_threshold, s.r2_threshold), (0.2, 0.5, 0.6)),
        "retraining": (
            (
                s.retrain_traffic_weight,
                s.retrain_traffic_ramp_rows,
                s.retrain_traffic_half_life_days,
                s.retrain_holdout_share,
            ),
            (0.9, 200, 30, 0.3),
        ),
        "promotion gate on evidence": (
            (s.gate_confidence, s.gate_min_labelled_rows, s.gate_bootstrap_samples),
            (0.95, 100, 1_000),
        ),
        "retrain lock lease": (s.monitor_lock_seconds, 3_600),
        "Evidently history": (
            (s.evidently_workspace_dir, s.evidently_url, s.evidently_secret, s.monitor_ui_port),
            (artifacts / "evidently", None, None, 8002),
        ),
        "champion / challenger": (
            (s.promotion_mode, s.canary_percent, s.shadow_max_wait_hours, s.shadow_interval),
            ("direct", 0, 72, 0.02),
        ),
        "limits (README: Limits)": (
            (
                s.max_body_bytes,
                s.max_json_depth,
                s.max_json_keys,
                s.max_number_chars,
                s.max_string_chars,
                s.max_listed_errors,
                s.body_read_timeout,
                s.log_buffer_max_rows,
            ),
            (65_536, 8, 64, 40, 256, 20, 10.0, 100_000),
        ),
        "load_data download (README: load_data)": (
            (s.download_timeout, s.download_max_bytes),
            (30.0, 200_000_000),
        ),
    }
    assert {row: actual for row, (actual, _) in table.items()} == {
        row: expected for row, (_, expected) in table.items()
    }


def test_mlflow_http_retries_default_to_two_so_a_stage_fails_in_seconds(monkeypatch):
    """README (team setup): MLflow's own default retries 7 times with backoff (minutes); the project sets 2
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
