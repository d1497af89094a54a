"""promote.py on a real pipeline run: staging is the best candidate that passed, production moves only for a
candidate that beats it, and the shadow promotion mode leaves the winner in staging."""

from __future__ import annotations

import re
import shutil

import pytest
from mlflow import MlflowClient

from housing.registry.ledger import DONE, FOUND, read_history
from housing.registry.tracking import RUN_TYPE_TAG, TRAINING_RUN_TYPE
from housing.store.tables import make_engine
from tests.conftest import run_in_process, stage_env
from tests.helpers import copy_store

NAME = "CaliforniaHousing"


SQLITE = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""The promise does not depend on the tracking backend: the SQLite pipeline run only."""


def assert_staging_is_the_best_that_passed(client: MlflowClient, training_run_id: str) -> str:
    """``staging`` names the candidate of the training run with the best eval R2 (then RMSE) among those that
    passed."""
    candidates = [
        v
        for v in client.search_model_versions(f"name = '{NAME}'")
        if v.tags.get("training_run_id") == training_run_id
    ]
    passed = [v for v in candidates if v.tags["staging_gate"] == "passed"]
    assert len(passed) >= 2 and len(passed) < len(candidates), (
        "a check that can fail needs two passing and one failing candidate"
    )
    best = min(passed, key=lambda v: (-float(v.tags["eval_r2"]), float(v.tags["eval_rmse"])))
    staging = client.get_model_version_by_alias(NAME, "staging")
    assert str(staging.version) == str(best.version), (
        staging.version,
        [(v.version, v.tags["eval_r2"]) for v in passed],
    )
    return str(staging.version)


@SQLITE
def test_staging_names_the_best_candidate_that_passed_its_gate(pipeline_run):
    client = MlflowClient(pipeline_run.tracking_uri)
    staging = client.get_model_version_by_alias(NAME, "staging")
    assert_staging_is_the_best_that_passed(client, staging.tags["training_run_id"])


@SQLITE
def test_promotion_refuses_a_candidate_that_does_not_beat_production(pipeline_run, tmp_path):
    """A copy of the pipeline run's registry (production: its best model, lightgbm_spatial) gets a newer
    training run that registered three of its real models again: random_forest, gradient_boosting and
    linear_regression. The best of them passes the production gate (R2 > 0.75) but is worse than production on
    the same rows: promote.py keeps production, says why, records nothing in the ledger, and gives ``staging``
    to the best that passed."""
    tracking_uri = copy_store(pipeline_run, tmp_path)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    production = client.get_model_version_by_alias(NAME, "production")
    assert production.tags["candidate"] == "lightgbm_spatial"
    models = {v.tags["candidate"]: v for v in client.search_model_versions(f"name = '{NAME}'")}
    experiment = client.get_experiment_by_name(pipeline_run.settings().experiment_name)
    assert experiment is not None
    latest = client.create_run(experiment.experiment_id, tags={RUN_TYPE_TAG: TRAINING_RUN_TYPE}).info.run_id
    client.set_terminated(latest, "FINISHED")
    registered = [
        str(
            client.create_model_version(
                NAME,
                source=client.get_model_version_download_uri(NAME, models[candidate].version),
                tags={"candidate": candidate, "training_run_id": latest},
            ).version
        )
        for candidate in ("random_forest", "gradient_boosting", "linear_regression")
    ]
    client.set_registered_model_alias(NAME, "staging", production.version)
    shutil.copytree(pipeline_run.artifacts_dir / "split", tmp_path / "artifacts" / "split")

    result = run_in_process(
        "promote.py", env=stage_env(tmp_path, MLFLOW_TRACKING_URI=tracking_uri), cwd=tmp_path
    )

    assert result.returncode == 0, result.stdout + result.stderr
    staging = assert_staging_is_the_best_that_passed(client, latest)
    assert staging == registered[1]  # gradient_boosting: neither the first registered nor the last
    assert re.search(
        rf"production unchanged: the best candidate, version {staging} \(gradient_boosting, R2 0\.\d+, RMSE"
        r" 0\.\d+\), does not "
        rf"beat production version {production.version} \(lightgbm_spatial, R2 0\.\d+, RMSE 0\.\d+\) on the"
        r" same data",
        result.stdout,
    ), result.stdout
    assert str(client.get_model_version_by_alias(NAME, "production").version) == str(production.version)
    assert (
        float(client.get_model_version(NAME, staging).tags["eval_r2"])
        > pipeline_run.settings().production_r2_threshold
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'artifacts' / 'prediction_log.db'}")
    try:
        # production did not move, and is recorded where promote found it (set outside this ledger); then
        # staging's move to the best passing candidate
        found = read_history(engine, NAME, alias=None)
        assert [(entry.alias, entry.status, entry.to_version) for entry in found] == [
            ("production", FOUND, str(production.version)),
            ("staging", DONE, staging),
        ]
    finally:
        engine.dispose()


@SQLITE
def test_promotion_mode_shadow_leaves_the_winner_in_staging_and_direct_mode_promotes_it(
    pipeline_run, tmp_path
):
    """A copy of the registry whose production is its linear model: with HOUSING_PROMOTION_MODE=shadow
    promote.py puts the better candidate (lightgbm_spatial) in staging for live judgement and leaves
    production; by default it promotes.
    """
    tracking_uri = copy_store(pipeline_run, tmp_path)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    models = {v.tags["candidate"]: str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")}
    client.set_registered_model_alias(NAME, "production", models["linear_regression"])
    client.set_registered_model_alias(NAME, "staging", models["linear_regression"])
    shutil.copytree(pipeline_run.artifacts_dir / "split", tmp_path / "artifacts" / "split")
    env = stage_env(tmp_path, MLFLOW_TRACKING_URI=tracking_uri)

    shadow = run_in_process("promote.py", env={**env, "HOUSING_PROMOTION_MODE": "shadow"}, cwd=tmp_path)
    assert shadow.returncode == 0, shadow.stdout + shadow.stderr
    assert str(client.get_model_version_by_alias(NAME, "production").version) == models["linear_regression"]
    assert str(client.get_model_version_by_alias(NAME, "staging").version) == models["lightgbm_spatial"]
    assert f"(version {models['lightgbm_spatial']}) is judged on live traffic" in shadow.stdout, shadow.stdout

    direct = run_in_process("promote.py", env=env, cwd=tmp_path)
    assert direct.returncode == 0, direct.stdout + direct.stderr
    assert str(client.get_model_version_by_alias(NAME, "production").version) == models["lightgbm_spatial"]
    engine = make_engine(f"sqlite:///{tmp_path / 'artifacts' / 'prediction_log.db'}")
    try:
        history = read_history(engine, NAME)
        assert [(entry.from_version, entry.to_version, entry.status) for entry in history] == [
            (None, models["linear_regression"], FOUND),  # set outside the ledger: found there
            (models["linear_regression"], models["lightgbm_spatial"], DONE),
        ]
    finally:
        engine.dispose()
