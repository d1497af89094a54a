"""monitor.py as a user runs it: --since-minutes reads only that window of the serving version's predictions
(the time filter is SQL on each backend's timestamps), the report is saved timestamped and as latest, the
round is an MLflow run; --watch repeats until Ctrl-C, which ends it after the round in progress."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pytest
from mlflow import MlflowClient

from housing.data.artifacts import load_pickle
from housing.schema import FEATURE_NAMES
from housing.store.log_reads import read_window
from housing.store.prediction_log import PredictionLog
from housing.store.tables import prediction_rows
from tests.conftest import PROJECT_DIR, PipelineRun, run_in_process
from tests.helpers import held_out_rows

NAME = "CaliforniaHousing"


def logged_window(run: PipelineRun, log_url: str) -> str:
    """1,300 predictions of the serving version (700 logged three hours ago, 600 two minutes ago) and 100 of
    another version two minutes ago, written to a fresh log; the serving version."""
    production = str(MlflowClient(run.tracking_uri).get_model_version_by_alias(NAME, "production").version)
    rows = held_out_rows(run, 1_400)
    labels = load_pickle(run.artifacts_dir / "split" / "y_test.pkl").iloc[:1_400].to_numpy()
    log = PredictionLog(log_url)
    now = datetime.now(UTC)
    for start, count, age, version in (
        (0, 700, timedelta(hours=3), production),
        (700, 600, timedelta(minutes=2), production),
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
    return production


def monitor_env(run: PipelineRun, tmp_path: Path) -> tuple[dict[str, str], str]:
    """The copied registry, a private artifacts folder (reports go there), a fresh log of the window above."""
    log_url = run.backend.new_log_url("since")
    production = logged_window(run, log_url)
    artifacts = tmp_path / "artifacts"
    env = dict(run.env, HOUSING_PREDICTION_LOG_URL=log_url, HOUSING_ARTIFACTS_DIR=str(artifacts))
    for folder in ("split", "data"):
        (artifacts / folder).mkdir(parents=True)
        for path in (run.artifacts_dir / folder).iterdir():
            (artifacts / folder / path.name).write_bytes(path.read_bytes())
    return env, production


def test_monitor_since_minutes_reads_only_that_window_and_saves_the_report_as_latest(mutable_run, tmp_path):
    """``--since-minutes 30`` with the default window of 2,000 must judge the 600 recent predictions of the
    serving version alone."""
    env, production = monitor_env(mutable_run, tmp_path)
    client = MlflowClient(mutable_run.tracking_uri)
    monitoring = client.get_experiment_by_name("monitoring")
    before = (
        {run.info.run_id for run in client.search_runs([monitoring.experiment_id])} if monitoring else set()
    )

    result = run_in_process("monitor.py", "--dry-run", "--since-minutes", "30", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"window: 600 predictions served by production version {production}, 0 labelled" in result.stdout
    reports = tmp_path / "artifacts" / "reports"
    latest = sorted(path.name for path in reports.glob("*_latest.*"))
    assert latest == ["decision_latest.json", "monitor_latest.html", "monitor_latest.json"]
    for name in latest:
        [stamped] = [path for path in reports.glob(name.replace("latest", "*")) if path.name != name]
        assert re.fullmatch(r"(decision|monitor)_\d{8}T\d{6}Z\.(json|html)", stamped.name)
        assert stamped.read_bytes() == (reports / name).read_bytes() and stamped.stat().st_size > 0
    decision = json.loads((reports / "decision_latest.json").read_text())
    assert decision["window_rows"] == 600 and decision["production_version"] == production
    monitoring = client.get_experiment_by_name("monitoring")  # the round, as the MLflow UI shows it
    assert monitoring is not None
    [run] = [run for run in client.search_runs([monitoring.experiment_id]) if run.info.run_id not in before]
    metrics = run.data.metrics
    assert (metrics["window_rows"], metrics["labelled_rows"]) == (600, 0)
    assert metrics["drift_share"] == decision["drift_share"]
    assert {f"drift_score_{name}" for name in FEATURE_NAMES} <= set(metrics) and "evidence_needed" in metrics
    assert "rmse" not in metrics  # estimated only
    assert metrics["estimated_rmse"] == pytest.approx(decision["estimated_rmse"], abs=1e-4)
    assert run.data.tags["decision"] == decision["decision"] and run.data.params["window"] == "2000"
    saved = sorted(artifact.path for artifact in client.list_artifacts(run.info.run_id, "report"))
    assert saved == [f"report/{path.name}" for path in sorted(reports.glob("*")) if "latest" not in path.name]


WATCH_DEADLINE_SECONDS = 600
"""How long the test waits for each round's decision line before it fails (rounds take seconds)."""


def read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Put every line of ``stream`` on ``lines``, then None at its end."""
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_monitor_watch_repeats_rounds_until_ctrl_c_ends_it_after_the_round_in_progress(mutable_run, tmp_path):
    """--watch: a round, then another, until interrupted (Ctrl-C: exit 130, said in one line). The signal is
    handled the same whatever the store: SQLite only."""
    env, _ = monitor_env(mutable_run, tmp_path)
    error_path = tmp_path / "watch.stderr"
    error_file = error_path.open("w")
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
        stderr=error_file,
        text=True,
    )
    assert watcher.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=read_lines, args=(watcher.stdout, lines), daemon=True).start()
    decisions = 0
    try:
        while decisions < 2:
            line = lines.get(timeout=WATCH_DEADLINE_SECONDS)  # a deadline that ends the wait, not a figure
            if line is None:
                break  # the watcher ended on its own
            decisions += line.startswith("decision: ")
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            watcher.wait(timeout=300)  # the round in progress ends first
        except subprocess.TimeoutExpired:
            watcher.kill()  # never left running after the test
            raise
        finally:
            error_file.close()
    errors = error_path.read_text()
    assert decisions == 2 and watcher.returncode == 130, errors
    assert errors.strip().splitlines()[-1] == "interrupted" and "Traceback" not in errors
