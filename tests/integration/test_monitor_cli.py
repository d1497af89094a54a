"""monitor.py --since-minutes reads only that window; the report is saved timestamped and as latest."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from mlflow import MlflowClient

from housing.data.artifacts import load_pickle
from housing.schema import FEATURE_NAMES
from housing.store.log_reads import read_window
from housing.store.prediction_log import PredictionLog, prediction_rows
from tests.conftest import PROJECT_DIR, run_stage, stage_env
from tests.helpers import copy_store, held_out_rows

NAME = "CaliforniaHousing"


SQLITE = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""The promise does not depend on the tracking backend: the SQLite pipeline run only."""


@SQLITE
def test_monitor_since_minutes_reads_only_that_window_and_saves_the_report_as_latest(pipeline_run, tmp_path):
    """1,300 predictions of the serving version (700 logged three hours ago, 600 two minutes ago) and 100 of
    another version two minutes ago; ``--since-minutes 30`` with the default window of 2,000 must judge the
    600 alone.
    """
    tracking_uri = copy_store(pipeline_run, tmp_path)  # the monitor records a run
    for folder in ("split", "data"):
        shutil.copytree(pipeline_run.artifacts_dir / folder, tmp_path / "artifacts" / folder)
    production = (
        MlflowClient(pipeline_run.tracking_uri).get_model_version_by_alias(NAME, "production").version
    )
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    log = PredictionLog(log_url)
    rows = held_out_rows(pipeline_run, 1_400)
    labels = load_pickle(pipeline_run.artifacts_dir / "split" / "y_test.pkl").iloc[:1_400].to_numpy()
    now = datetime.now(UTC)
    for start, count, age, version in (
        (0, 700, timedelta(hours=3), str(production)),
        (700, 600, timedelta(minutes=2), str(production)),
        (1_300, 100, timedelta(minutes=2), "999"),
    ):
        log.append(
            prediction_rows(
                [uuid.uuid4().hex for _ in range(count)],
                rows.iloc[start : start + count].to_numpy(),
                labels[start : start + count].tolist(),
                model_name=NAME,
                model_version=version,
                latency_ms=1.0,
                created_at=log.timestamp(now - age),
            )
        )
    assert log.flush() and len(read_window(log.engine)) == 1_400
    log.close()
    env = stage_env(tmp_path, MLFLOW_TRACKING_URI=tracking_uri, HOUSING_PREDICTION_LOG_URL=log_url)

    result = run_stage("monitor.py", "--dry-run", "--since-minutes", "30", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"window: 600 predictions served by production version {production}, 0 labelled" in result.stdout
    ), result.stdout
    reports = tmp_path / "artifacts" / "reports"
    latest = sorted(path.name for path in reports.glob("*_latest.*"))
    assert latest == ["decision_latest.json", "monitor_latest.html", "monitor_latest.json"]
    for name in latest:
        [stamped] = [path for path in reports.glob(name.replace("latest", "*")) if path.name != name]
        assert re.fullmatch(r"(decision|monitor)_\d{8}T\d{6}Z\.(json|html)", stamped.name)
        assert stamped.read_bytes() == (reports / name).read_bytes() and stamped.stat().st_size > 0
    decision = json.loads((reports / "decision_latest.json").read_text())
    assert decision["window_rows"] == 600 and decision["production_version"] == str(production)
    monitoring = MlflowClient(tracking_uri).get_experiment_by_name(
        "monitoring"
    )  # the round, as the MLflow UI shows it
    assert monitoring is not None
    [run] = MlflowClient(tracking_uri).search_runs([monitoring.experiment_id])
    metrics = run.data.metrics
    assert (metrics["window_rows"], metrics["labelled_rows"]) == (600, 0) and metrics[
        "drift_share"
    ] == decision["drift_share"]
    assert {f"drift_score_{name}" for name in FEATURE_NAMES} <= set(metrics) and "evidence_needed" in metrics
    assert "rmse" not in metrics and metrics["estimated_rmse"] == pytest.approx(
        decision["estimated_rmse"], abs=1e-4
    )  # estimated only
    assert run.data.tags["decision"] == decision["decision"] and run.data.params["window"] == "2000"
    assert sorted(
        artifact.path for artifact in MlflowClient(tracking_uri).list_artifacts(run.info.run_id, "report")
    ) == [f"report/{path.name}" for path in sorted(reports.glob("*")) if "latest" not in path.name]

    # --watch: a round, then another, until interrupted (Ctrl-C: exit 130, said in one line)
    watcher = subprocess.Popen(
        [
            sys.executable,
            str(PROJECT_DIR / "monitor.py"),
            "--dry-run",
            "--since-minutes",
            "30",
            "--watch",
            "0.5",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    decisions = 0
    try:
        for line in watcher.stdout:  # a hang here ends with the suite's own timeout, not a wrong answer
            decisions += line.startswith("decision: ")
            if decisions == 2:
                break
    finally:
        watcher.send_signal(signal.SIGINT)
        _, errors = watcher.communicate(timeout=120)
    assert decisions == 2 and watcher.returncode == 130, errors
    assert errors.strip().splitlines()[-1] == "interrupted" and "Traceback" not in errors
