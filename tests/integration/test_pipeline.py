"""The four stage scripts run for real, in order, against a temp MLflow SQLite store and the real data."""

import re

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from housing.registry.mlflow_ui import ui_links
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES
from housing.training.candidates import load_candidate_specs
from tests.conftest import run_in_process

EXPECTED_METRICS = {"r2", "rmse", "mae", "mse", "cv_r2_mean", "cv_r2_std"}


@pytest.fixture(scope="module")
def client(pipeline_run):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(pipeline_run.tracking_uri)
    yield MlflowClient(pipeline_run.tracking_uri)
    mlflow.set_tracking_uri(previous)


def registry_state(client: MlflowClient, name: str) -> tuple[dict, dict]:
    model = client.get_registered_model(name)
    versions = {v.version: dict(v.tags) for v in client.search_model_versions(f"name = '{name}'")}
    return dict(model.aliases), versions


def test_stages_print_no_warnings_or_tracebacks(pipeline_run):
    for script, result in pipeline_run.outputs.items():
        for line in (result.stdout + result.stderr).splitlines():
            assert "Traceback" not in line, script
            assert "Warning" not in line or "SADeprecationWarning" in line, f"{script}: {line}"


def test_every_candidate_is_a_child_run_with_metrics_signature_and_version(pipeline_run, client):
    settings = pipeline_run.settings()
    experiment = client.get_experiment_by_name(settings.experiment_name)
    parents = client.search_runs([experiment.experiment_id], "tags.`housing.run_type` = 'training'")
    assert len(parents) == 1 and parents[0].info.run_name == "Comparative Analysis"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    )
    expected = {spec.name for spec in load_candidate_specs(settings.candidates_path)}
    assert {run.info.run_name for run in children} == expected
    versions = {v.tags["candidate"]: v for v in client.search_model_versions("name = 'CaliforniaHousing'")}
    assert set(versions) == expected
    for run in children:
        assert set(run.data.metrics) >= EXPECTED_METRICS, run.info.run_name
        assert run.data.tags["data_sha256"] == parents[0].data.tags["data_sha256"]
        assert run.data.tags["git_commit"]
        assert {d.dataset.name for d in run.inputs.dataset_inputs} == {
            "california_housing_train",
            "california_housing_test",
        }
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/predicted_vs_actual.png", "plots/residuals.png"} <= artifacts
        version = versions[run.info.run_name]
        assert version.run_id == run.info.run_id
        info = mlflow.models.get_model_info(f"models:/CaliforniaHousing/{version.version}")
        assert info.signature is not None
        assert [col.name for col in info.signature.inputs.inputs] == list(FEATURE_NAMES)
        code = f"models:/CaliforniaHousing/{version.version}/code/housing/training"
        assert "code/housing/training/features.py" in {  # what mlflow models serve imports the model with
            artifact.path for artifact in mlflow.artifacts.list_artifacts(artifact_uri=code)
        }
    assert "comparison.json" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


def test_the_mlflow_ui_opens_on_runs_and_the_registry_describes_the_model(pipeline_run, client):
    """Through the tracking API (an MLflow tracking server on the PostgreSQL backend): the experiment is
    marked as model training, so MLflow 3's UI opens it on its runs, and the registered model and each version
    say what they are.
    """
    settings = pipeline_run.settings()
    experiment = client.get_experiment_by_name(settings.experiment_name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    model = client.get_registered_model(settings.model_name)
    assert "MedHouseVal" in model.description and "hundreds of thousands of US dollars" in model.description
    assert all(f"`{name}`" in model.description for name in FEATURE_NAMES)
    parent = client.search_runs([experiment.experiment_id], "tags.`housing.run_type` = 'training'")[0]
    for version in client.search_model_versions(f"name = '{settings.model_name}'"):
        assert version.description.startswith(f"{version.tags['candidate']}: ")
        assert (
            f"data sha256 {parent.data.tags['data_sha256']}" in version.description
            and "MedHouseVal" in version.description
        )


def test_make_mlflow_ui_links_open_each_experiment_on_its_runs(pipeline_run, client):
    settings = pipeline_run.settings()
    experiment = client.get_experiment_by_name(settings.experiment_name)
    links = ui_links(settings, "http://127.0.0.1:5000")
    base, mode = "http://127.0.0.1:5000/#", "workflowType=machine_learning"
    monitoring = client.get_experiment_by_name("monitoring")
    assert links == [
        f"California-Housing-Regression: {base}/experiments/{experiment.experiment_id}/runs?{mode}",
        *([f"monitoring: {base}/experiments/{monitoring.experiment_id}/runs?{mode}"] if monitoring else []),
        f"registered model CaliforniaHousing: {base}/models/CaliforniaHousing?{mode}",
    ]


def test_train_prints_a_summary_table(pipeline_run, client):
    """One row per candidate under the header: its name, the test-split R² and RMSE its child run logged,
    the CV R², the fit time and the registered version."""
    lines = pipeline_run.outputs["train.py"].stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.split()[:2] == ["model", "R2"])
    assert lines[header].split() == ["model", "R2", "RMSE", "CV", "R2", "fit", "s", "version"]
    rows = {}
    for line in lines[header + 1 :]:
        fields = line.split()
        if len(fields) != 6:
            break
        rows[fields[0]] = fields[1:]
    assert {"gradient_boosting", "linear_regression", "random_forest", "lightgbm_spatial"} <= set(rows)
    for name, (r2, rmse, cv, fit_seconds, version) in rows.items():
        registered = client.get_model_version("CaliforniaHousing", version)
        metrics = client.get_run(registered.run_id).data.metrics
        assert client.get_run(registered.run_id).data.tags["candidate"] == name
        assert float(r2) == pytest.approx(metrics["r2"], abs=5e-5)
        assert float(rmse) == pytest.approx(metrics["rmse"], abs=5e-5)
        assert re.fullmatch(r"0\.\d{3}\+-0\.\d{3}", cv) and float(fit_seconds) >= 0


def test_production_alias_points_to_a_good_model(pipeline_run, client):
    production = client.get_model_version_by_alias("CaliforniaHousing", "production")
    assert float(production.tags["eval_r2"]) >= 0.83
    staging = client.get_model_version_by_alias("CaliforniaHousing", "staging")
    assert staging.tags["staging_gate"] == "passed"
    for version in client.search_model_versions("name = 'CaliforniaHousing'"):
        assert version.tags["staging_gate"] == (
            "passed" if float(version.tags["eval_r2"]) > 0.7 else "failed"
        )


def test_production_model_predicts_the_original_reports_request(pipeline_run):
    model = pipeline_run.load_version()
    prediction = model.predict(pd.DataFrame([EXAMPLE_REQUEST]))[0]
    assert 1.0 < prediction < 3.5  # $100k-$350k for a 1990 Los Angeles district with median income $35k


def test_promote_again_changes_nothing(pipeline_run, client):
    before = registry_state(client, "CaliforniaHousing")
    result = run_in_process("promote.py", env=pipeline_run.env)
    assert result.returncode == 0, result.stderr
    assert "production unchanged" in result.stdout
    assert registry_state(client, "CaliforniaHousing") == before


def test_impossible_threshold_keeps_production_and_says_why(pipeline_run, client):
    before = registry_state(client, "CaliforniaHousing")
    result = run_in_process("promote.py", "--production-r2-threshold", "0.999", env=pipeline_run.env)
    assert result.returncode == 0, result.stderr
    assert "production unchanged" in result.stdout and "not above the production gate 0.999" in result.stdout
    assert registry_state(client, "CaliforniaHousing")[0] == before[0]


@pytest.mark.parametrize(
    "backend_name", ["sqlite"], indirect=True
)  # the flag reaches the same gate on both stores
def test_the_staging_threshold_flag_fails_every_candidate_and_leaves_the_aliases(pipeline_run, client):
    before = registry_state(client, "CaliforniaHousing")
    try:
        result = run_in_process("promote.py", "--staging-r2-threshold", "0.999", env=pipeline_run.env)
        assert result.returncode == 0, result.stderr
        assert "no candidate passed the staging gate (R2 > 0.999); 'staging' unchanged" in result.stdout, (
            result.stdout
        )
        versions = client.search_model_versions("name = 'CaliforniaHousing'")
        assert versions and {v.tags.get("staging_gate") for v in versions if "eval_r2" in v.tags} == {
            "failed"
        }
        assert registry_state(client, "CaliforniaHousing")[0] == before[0]
    finally:
        restored = run_in_process(
            "promote.py", env=pipeline_run.env
        )  # the default gate again: the tags as other tests expect
        assert restored.returncode == 0, restored.stderr
    assert {
        v.tags.get("staging_gate")
        for v in client.search_model_versions("name = 'CaliforniaHousing'")
        if float(v.tags.get("eval_r2", "0")) > 0.7
    } == {"passed"}


@pytest.mark.parametrize(
    "backend_name", ["sqlite"], indirect=True
)  # Optuna's search does not depend on the store
def test_tune_logs_nested_trials_and_writes_a_deterministic_proposal(pipeline_run, tmp_path):
    import yaml

    outputs = []
    for attempt in range(2):
        path = tmp_path / f"proposal-{attempt}.yaml"
        result = run_in_process(
            "train.py",
            "--tune",
            "2",
            "--estimator-scale",
            "0.1",
            "--tune-output",
            str(path),
            env=pipeline_run.env,
        )
        assert result.returncode == 0, result.stderr
        assert "best CV R2" in result.stdout
        outputs.append(yaml.safe_load(path.read_text())["lightgbm_spatial"])
    assert outputs[0] == outputs[1]  # same seed, same trials, same result
    assert outputs[0]["estimator"] == "LGBMRegressor" and outputs[0]["features"] == "spatial"
    client = MlflowClient(pipeline_run.tracking_uri)
    experiment = client.get_experiment_by_name("California-Housing-Regression")
    assert experiment is not None
    tuning = client.search_runs([experiment.experiment_id], "tags.`housing.run_type` = 'tuning'")
    assert len(tuning) == 2
    trials = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{tuning[0].info.run_id}'"
    )
    assert len(trials) == 2 and all("cv_r2_mean" in run.data.metrics for run in trials)
    # tuning runs are not training runs: promote still works on the comparison run
    assert run_in_process("promote.py", env=pipeline_run.env).returncode == 0
