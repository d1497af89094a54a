"""README promises that had no test that could fail, each checked on the real component it is about:

- Prometheus counters and histograms of two uvicorn workers add up to exactly what the clients received; then a kill -9
  of the supervisor and both workers mid-load loses only rows answered within the last flush interval (and the flush
  in flight), counted by request id against the 200s the clients received, and never corrupts the SQLite log;
- a retried batch never duplicates a row, and two conflicting labels at once store one and refuse the other, on
  PostgreSQL too (the SQLite half is in tests/code/test_prediction_log.py);
- promotion refuses a candidate that passes the production gate but does not beat production (promote.py on a
  registry of real trained models), and ``staging`` names the best candidate that passed its gate;
- the served model really runs the compiled path: with the library's own predict and transforms made to fail, the
  service and its micro-batcher still answer, with the same numbers;
- preprocess prints the seed's EDA and writes its three plots, the split's record, and the outlier rule and scaler
  that equal the logged pipelines' own;
- ``monitor.py --since-minutes`` reads only that window of the serving version's predictions, and saves the report
  timestamped and as ``*_latest``.

Tests that record something in a registry work on a copy of the pipeline run's (already migrated) SQLite store.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import matplotlib.image
import numpy as np
import pandas as pd
import psutil
import pytest
from mlflow import MlflowClient
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from housing.data.artifacts import load_json, load_pickle
from housing.registry.ledger import read_history
from housing.registry.tracking import RUN_TYPE_TAG, TRAINING_RUN_TYPE
from housing.registry.versions import load_model_version
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES
from housing.serving.micro_batch import MicroBatcher
from housing.serving.model_service import ModelService
from housing.store.prediction_log import PredictionLog, count_rows, prediction_rows, read_window
from housing.store.tables import make_engine
from localteam.services import create_database, database_url
from tests.code.test_prediction_log import (
    check_a_batch_retried_after_an_unclear_failure_is_stored_once,
    check_two_conflicting_labels_at_once_store_the_first_and_refuse_the_other,
)
from tests.conftest import PROJECT_DIR, run_stage, stage_env
from tests.server import ApiServer, server_env

NAME = "CaliforniaHousing"
SQLITE = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""The promise does not depend on the tracking backend: the SQLite pipeline run only."""


def wait_for(condition: Callable[[], Any], timeout: float = 60, every: float = 0.2) -> Any:
    """``condition()``'s first truthy value, polled until ``timeout`` (then the last value)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(every)
    return value


def copy_store(pipeline_run: Any, tmp_path: Path) -> str:
    """A consistent copy of the pipeline run's SQLite tracking store (SQLite's backup API); its tracking URI. The
    models stay where the run logged them and are only read."""
    source, copy = sqlite3.connect(pipeline_run.work_dir / "mlflow.db"), sqlite3.connect(tmp_path / "mlflow.db")
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def held_out_rows(pipeline_run: Any, rows: int) -> pd.DataFrame:
    """The first ``rows`` rows of the pipeline run's test split, the 8 features in contract order."""
    return load_pickle(pipeline_run.artifacts_dir / "split" / "X_test.pkl").loc[:, list(FEATURE_NAMES)].iloc[:rows]


# --- the log on PostgreSQL: retried batches, conflicting labels ----------------------------------------------------------
@pytest.mark.postgres
def test_on_postgresql_a_retried_batch_is_stored_once_and_conflicting_labels_store_one(postgres, tmp_path):
    for spill_dir in (None, tmp_path / "spill"):
        database = f"log_promises_{uuid.uuid4().hex[:8]}"
        create_database(postgres.admin_url, database)
        check_a_batch_retried_after_an_unclear_failure_is_stored_once(database_url(postgres.admin_url, database), spill_dir)
    database = f"log_labels_{uuid.uuid4().hex[:8]}"
    create_database(postgres.admin_url, database)
    check_two_conflicting_labels_at_once_store_the_first_and_refuse_the_other(database_url(postgres.admin_url, database))


# --- promotion -------------------------------------------------------------------------------------------------------
def assert_staging_is_the_best_that_passed(client: MlflowClient, training_run_id: str) -> str:
    """``staging`` names the candidate of the training run with the best eval R2 (then RMSE) among those that passed."""
    candidates = [v for v in client.search_model_versions(f"name = '{NAME}'") if v.tags.get("training_run_id") == training_run_id]
    passed = [v for v in candidates if v.tags["staging_gate"] == "passed"]
    assert len(passed) >= 2 and len(passed) < len(candidates), "a check that can fail needs two passing and one failing candidate"
    best = min(passed, key=lambda v: (-float(v.tags["eval_r2"]), float(v.tags["eval_rmse"])))
    staging = client.get_model_version_by_alias(NAME, "staging")
    assert str(staging.version) == str(best.version), (staging.version, [(v.version, v.tags["eval_r2"]) for v in passed])
    return str(staging.version)


@SQLITE
def test_staging_names_the_best_candidate_that_passed_its_gate(pipeline_run):
    client = MlflowClient(pipeline_run.tracking_uri)
    staging = client.get_model_version_by_alias(NAME, "staging")
    assert_staging_is_the_best_that_passed(client, staging.tags["training_run_id"])


@SQLITE
def test_promotion_refuses_a_candidate_that_does_not_beat_production(pipeline_run, tmp_path):
    """A copy of the pipeline run's registry (production: its best model, lightgbm_spatial) gets a newer training run
    that registered three of its real models again: random_forest, gradient_boosting and linear_regression. The best
    of them passes the production gate (R2 > 0.75) but is worse than production on the same rows: promote.py keeps
    production, says why, records nothing in the ledger, and gives ``staging`` to the best that passed."""
    tracking_uri = copy_store(pipeline_run, tmp_path)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    production = client.get_model_version_by_alias(NAME, "production")
    assert production.tags["candidate"] == "lightgbm_spatial"
    models = {v.tags["candidate"]: v for v in client.search_model_versions(f"name = '{NAME}'")}
    experiment = client.get_experiment_by_name(pipeline_run.settings().experiment_name)
    assert experiment is not None
    latest = client.create_run(experiment.experiment_id, tags={RUN_TYPE_TAG: TRAINING_RUN_TYPE}).info.run_id
    client.set_terminated(latest, "FINISHED")
    registered = [str(client.create_model_version(NAME, source=client.get_model_version_download_uri(NAME, models[candidate].version),
                                                  tags={"candidate": candidate, "training_run_id": latest}).version)
                  for candidate in ("random_forest", "gradient_boosting", "linear_regression")]
    client.set_registered_model_alias(NAME, "staging", production.version)
    shutil.copytree(pipeline_run.artifacts_dir / "split", tmp_path / "artifacts" / "split")

    result = run_stage("promote.py", env=stage_env(tmp_path, MLFLOW_TRACKING_URI=tracking_uri), cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    staging = assert_staging_is_the_best_that_passed(client, latest)
    assert staging == registered[1]  # gradient_boosting: neither the first registered nor the last
    assert re.search(rf"production unchanged: the best candidate, version {staging} \(gradient_boosting, R2 0\.\d+, RMSE 0\.\d+\), does not "
                     rf"beat production version {production.version} \(lightgbm_spatial, R2 0\.\d+, RMSE 0\.\d+\) on the same data",
                     result.stdout), result.stdout
    assert str(client.get_model_version_by_alias(NAME, "production").version) == str(production.version)
    assert float(client.get_model_version(NAME, staging).tags["eval_r2"]) > pipeline_run.settings().production_r2_threshold
    engine = make_engine(f"sqlite:///{tmp_path / 'artifacts' / 'prediction_log.db'}")
    try:
        assert read_history(engine, NAME) == []  # nothing moved, nothing recorded
    finally:
        engine.dispose()


@SQLITE
def test_promotion_mode_shadow_leaves_the_winner_in_staging_and_direct_mode_promotes_it(pipeline_run, tmp_path):
    """A copy of the registry whose production is its linear model: with HOUSING_PROMOTION_MODE=shadow promote.py puts
    the better candidate (lightgbm_spatial) in staging for live judgement and leaves production; by default it promotes."""
    tracking_uri = copy_store(pipeline_run, tmp_path)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    models = {v.tags["candidate"]: str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")}
    client.set_registered_model_alias(NAME, "production", models["linear_regression"])
    client.set_registered_model_alias(NAME, "staging", models["linear_regression"])
    shutil.copytree(pipeline_run.artifacts_dir / "split", tmp_path / "artifacts" / "split")
    env = stage_env(tmp_path, MLFLOW_TRACKING_URI=tracking_uri)

    shadow = run_stage("promote.py", env={**env, "HOUSING_PROMOTION_MODE": "shadow"}, cwd=tmp_path)
    assert shadow.returncode == 0, shadow.stdout + shadow.stderr
    assert str(client.get_model_version_by_alias(NAME, "production").version) == models["linear_regression"]
    assert str(client.get_model_version_by_alias(NAME, "staging").version) == models["lightgbm_spatial"]
    assert f"(version {models['lightgbm_spatial']}) is judged on live traffic" in shadow.stdout, shadow.stdout

    direct = run_stage("promote.py", env=env, cwd=tmp_path)
    assert direct.returncode == 0, direct.stdout + direct.stderr
    assert str(client.get_model_version_by_alias(NAME, "production").version) == models["lightgbm_spatial"]
    engine = make_engine(f"sqlite:///{tmp_path / 'artifacts' / 'prediction_log.db'}")
    try:
        history = read_history(engine, NAME)
        assert [(entry.from_version, entry.to_version) for entry in history] == [(models["linear_regression"], models["lightgbm_spatial"])]
    finally:
        engine.dispose()


# --- the compiled path is what serves ---------------------------------------------------------------------------------
def refuse(*_: Any, **__: Any) -> Any:
    raise AssertionError("the library's own predict or transform ran on the serving path")


@SQLITE
def test_the_served_model_answers_through_the_compiled_path_alone(pipeline_run):
    service = ModelService(pipeline_run.settings())
    assert service.refresh()
    model = service.require()
    rows = held_out_rows(pipeline_run, 300)
    served = model.predict(rows.to_numpy(dtype=np.float64))
    np.testing.assert_allclose(served, model.pipeline.predict(rows), rtol=0, atol=1e-9)
    assert model.fast_predict is not None and all(step["compiled"] for step in model.predict_path)  # what /model says

    model.pipeline.predict = refuse
    for _, step in model.pipeline.steps:
        for method in ("predict", "transform"):
            if hasattr(step, method):
                setattr(step, method, refuse)
        if hasattr(step, "booster_"):
            step.booster_.predict = refuse
    np.testing.assert_array_equal(model.predict(rows.to_numpy(dtype=np.float64)), served)

    async def one_by_one() -> list[tuple[float, Any]]:  # as /predict's single rows are served: through the micro-batcher
        batcher = MicroBatcher(service)
        return await asyncio.gather(*(batcher.predict_one(row) for row in rows.to_numpy(dtype=np.float64)[:50]))

    answers = asyncio.run(one_by_one())
    np.testing.assert_allclose([value for value, _ in answers], served[:50], rtol=0, atol=1e-12)


# --- preprocess: the seed's EDA, its plots, the split's record --------------------------------------------------------
@SQLITE
def test_preprocess_prints_the_eda_and_writes_the_plots_and_the_inspection_steps(pipeline_run):
    frame = pd.read_csv(pipeline_run.artifacts_dir / "data" / "california_housing.csv")
    out = pipeline_run.outputs["preprocess.py"].stdout
    titles = re.findall(r"^== (.+) ==$", out, flags=re.MULTILINE)
    assert titles == ["First rows", "Shape", "Data types", "Missing values", "Statistics"]
    sections = dict(zip(titles, re.split(r"^== .+ ==$", out, flags=re.MULTILINE)[1:], strict=True))
    assert f"{frame['MedInc'].iloc[0]:.4f}" in sections["First rows"] and len(sections["First rows"].strip().splitlines()) == 6
    assert sections["Shape"].strip() == f"{len(frame):,} rows x {frame.shape[1]} columns" == "20,640 rows x 9 columns"
    assert all(re.search(rf"^{name}\s+float64$", sections["Data types"], flags=re.MULTILINE) for name in frame.columns)
    assert all(re.search(rf"^{name}\s+0$", sections["Missing values"], flags=re.MULTILINE) for name in frame.columns)
    for name in frame.columns:  # count, mean, std, min, quartiles, max of every column, as pandas computes them
        line = next(line for line in sections["Statistics"].splitlines() if line.startswith(f"{name} "))
        figures = [float(value) for value in line.split()[1:]]
        np.testing.assert_allclose(figures, frame[name].describe().to_numpy(), rtol=1e-5)
    assert "split 20,640 rows into 16,512 train / 4,128 test (random_state 42)" in out

    images = {}
    for plot in ("target_distribution", "correlation_matrix", "features_distribution"):
        image = matplotlib.image.imread(pipeline_run.artifacts_dir / "plots" / f"{plot}.png")
        assert image.shape[0] > 250 and image.shape[1] > 400 and image.std() > 0.05, (plot, image.shape)  # a drawn figure
        images[plot] = image
    assert images["features_distribution"].shape[1] > 1.5 * images["target_distribution"].shape[1]  # 14 inches wide, 8 plots

    split_dir = pipeline_run.artifacts_dir / "split"
    record = load_json(split_dir / "split.json")
    manifest = load_json(pipeline_run.artifacts_dir / "data" / "manifest.json")
    assert record == {**record, "random_state": 42, "test_size": 0.2, "train_rows": 16_512, "test_rows": 4_128,
                      "dataset_sha256": manifest["sha256"]}
    client = MlflowClient(pipeline_run.tracking_uri)
    linear = next(v for v in client.search_model_versions(f"name = '{NAME}'") if v.tags["candidate"] == "linear_regression")
    pipeline = load_model_version(client, NAME, linear.version)
    outliers, scaler = load_pickle(split_dir / "outliers.pkl"), load_pickle(split_dir / "scaler.pkl")
    np.testing.assert_array_equal(outliers.lower_bounds_, pipeline.named_steps["outliers"].lower_bounds_)
    np.testing.assert_array_equal(outliers.upper_bounds_, pipeline.named_steps["outliers"].upper_bounds_)
    np.testing.assert_array_equal(scaler.mean_, pipeline.named_steps["scaler"].mean_)
    np.testing.assert_array_equal(scaler.scale_, pipeline.named_steps["scaler"].scale_)


# --- monitor.py --since-minutes, reports as *_latest ---------------------------------------------------------------------
@SQLITE
def test_monitor_since_minutes_reads_only_that_window_and_saves_the_report_as_latest(pipeline_run, tmp_path):
    """1,300 predictions of the serving version (700 logged three hours ago, 600 two minutes ago) and 100 of another
    version two minutes ago; ``--since-minutes 30`` with the default window of 2,000 must judge the 600 alone."""
    tracking_uri = copy_store(pipeline_run, tmp_path)  # the monitor records a run
    for folder in ("split", "data"):
        shutil.copytree(pipeline_run.artifacts_dir / folder, tmp_path / "artifacts" / folder)
    production = MlflowClient(pipeline_run.tracking_uri).get_model_version_by_alias(NAME, "production").version
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    log = PredictionLog(log_url)
    rows = held_out_rows(pipeline_run, 1_400)
    labels = load_pickle(pipeline_run.artifacts_dir / "split" / "y_test.pkl").iloc[:1_400].to_numpy()
    now = datetime.now(UTC)
    for start, count, age, version in ((0, 700, timedelta(hours=3), str(production)), (700, 600, timedelta(minutes=2), str(production)),
                                       (1_300, 100, timedelta(minutes=2), "999")):
        log.append(prediction_rows([uuid.uuid4().hex for _ in range(count)], rows.iloc[start : start + count].to_numpy(),
                                   labels[start : start + count].tolist(), model_name=NAME, model_version=version, latency_ms=1.0,
                                   created_at=log.timestamp(now - age)))
    assert log.flush() and len(read_window(log.engine)) == 1_400
    log.close()
    env = stage_env(tmp_path, MLFLOW_TRACKING_URI=tracking_uri, HOUSING_PREDICTION_LOG_URL=log_url)

    result = run_stage("monitor.py", "--dry-run", "--since-minutes", "30", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"window: 600 predictions served by production version {production}, 0 labelled" in result.stdout, result.stdout
    reports = tmp_path / "artifacts" / "reports"
    latest = sorted(path.name for path in reports.glob("*_latest.*"))
    assert latest == ["decision_latest.json", "monitor_latest.html", "monitor_latest.json"]
    for name in latest:
        [stamped] = [path for path in reports.glob(name.replace("latest", "*")) if path.name != name]
        assert re.fullmatch(r"(decision|monitor)_\d{8}T\d{6}Z\.(json|html)", stamped.name)
        assert stamped.read_bytes() == (reports / name).read_bytes() and stamped.stat().st_size > 0
    decision = json.loads((reports / "decision_latest.json").read_text())
    assert decision["window_rows"] == 600 and decision["production_version"] == str(production)
    monitoring = MlflowClient(tracking_uri).get_experiment_by_name("monitoring")  # the round, as the MLflow UI shows it
    assert monitoring is not None
    [run] = MlflowClient(tracking_uri).search_runs([monitoring.experiment_id])
    metrics = run.data.metrics
    assert (metrics["window_rows"], metrics["labelled_rows"]) == (600, 0) and metrics["drift_share"] == decision["drift_share"]
    assert {f"drift_score_{name}" for name in FEATURE_NAMES} <= set(metrics) and "evidence_needed" in metrics
    assert "rmse" not in metrics and metrics["estimated_rmse"] == pytest.approx(decision["estimated_rmse"], abs=1e-4)  # estimated only
    assert run.data.tags["decision"] == decision["decision"] and run.data.params["window"] == "2000"
    assert sorted(artifact.path for artifact in MlflowClient(tracking_uri).list_artifacts(run.info.run_id, "report")) == [
        f"report/{path.name}" for path in sorted(reports.glob("*")) if "latest" not in path.name]

    # --watch: a round, then another, until interrupted (Ctrl-C: exit 130, said in one line)
    watcher = subprocess.Popen([sys.executable, str(PROJECT_DIR / "monitor.py"), "--dry-run", "--since-minutes", "30", "--watch", "0.5"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


# --- two workers: Prometheus adds up, then a kill -9 mid-load -------------------------------------------------------
FLUSH_INTERVAL = 0.5
"""HOUSING_LOG_FLUSH_INTERVAL of the server: long enough that each worker's buffer holds hundreds of rows at the kill."""
LOSS_WINDOW = 2 * FLUSH_INTERVAL
"""A row answered longer ago than this before the kill must be in the log: the last flush interval, plus as long
again for the flush in flight when the process died (its transaction dies with it)."""
LOAD_CLIENTS, LOAD_BATCH_ROWS, LOAD_PAUSE, KILL_AFTER_ROWS = 4, 10, 0.02, 4_000
"""Four clients, each sending 10 rows every 20 ms or so (about 2,000 rows a second in all), killed past 4,000 rows."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    exposition = httpx.get(f"{url}/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(exposition) for sample in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples carrying ``labels``."""
    return sum(value for (sample, found), value in samples.items() if sample == name and set(labels.items()) <= set(found))


def predict_requests_per_worker(folder: Path) -> dict[str, float]:
    """pid -> POST /predict 200s counted by that worker, read from its own file of the multiprocess folder."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        samples = [s for metric in multiprocess.MultiProcessCollector.merge([str(path)], accumulate=False) for s in metric.samples
                   if s.name == "housing_http_requests_total" and s.labels.get("route") == "/predict" and s.labels.get("status") == "200"]
        counts[path.stem.rsplit("_", 1)[1]] = sum(s.value for s in samples)
    return counts


def loaded_workers(url: str) -> set[str]:
    """The pids of the workers that have loaded the production model (housing_model_info at 1, one series per pid)."""
    return set(re.findall(r'housing_model_info\{alias="production",[^}]*pid="(\d+)"[^}]*\} 1\.0', httpx.get(f"{url}/metrics", timeout=10).text))


class Answers:
    """What the clients received: every 200's request ids and predictions with the time it arrived, and every request
    that got no 200 (a status, or a connection error) with its time."""

    def __init__(self) -> None:
        self.answered: list[tuple[float, list[str], list[float]]] = []
        self.failures: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def post(self, http: httpx.Client, body: Any) -> bool:
        """POST /predict and record the outcome; False once the server is gone."""
        try:
            response = http.post("/predict", json=body)
        except httpx.HTTPError as error:
            with self.lock:
                self.failures.append((time.monotonic(), type(error).__name__))
            return False
        arrived = time.monotonic()
        with self.lock:
            if response.status_code != 200:
                self.failures.append((arrived, f"HTTP {response.status_code}"))
                return True
            predictions = response.json()["predictions"] if isinstance(body, list) else [response.json()]
            self.answered.append((arrived, [p["request_id"] for p in predictions], [p["MedHouseVal"] for p in predictions]))
        return True

    @property
    def rows(self) -> int:
        return sum(len(ids) for _, ids, _ in self.answered)

    def values(self) -> list[float]:
        return [value for _, _, values in self.answered for value in values]


def in_threads(count: int, target: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def kill_9_all(server: ApiServer) -> float:
    """SIGKILL the uvicorn supervisor and every worker, as a crash of the host's processes would; the moment it began."""
    assert server.process is not None
    processes = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
    killed_at = time.monotonic()
    for process in processes:  # the supervisor first: it must not start replacements
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)
    return killed_at


def assert_prometheus_adds_up(url: str, folder: Path, answers: Answers, requests: int) -> None:
    """/metrics sums both workers' counters and histograms to what the clients received; each worker served some."""
    per_worker = predict_requests_per_worker(folder)
    assert len(per_worker) == 2 and min(per_worker.values()) > 0 and sum(per_worker.values()) == requests, per_worker
    samples, values = scrape(url), answers.values()
    assert total(samples, "housing_http_requests_total", route="/predict", status="200") == requests
    assert total(samples, "housing_http_request_duration_seconds_count", route="/predict", status="200") == requests
    for name, labels in (("housing_predictions_total", {}), ("housing_answered_rows_total", {"alias": "production"}),
                         ("housing_prediction_value_count", {}), ("housing_prediction_value_bucket", {"le": "+Inf"})):
        assert total(samples, name, **labels) == len(values), name
    assert total(samples, "housing_prediction_value_sum") == pytest.approx(sum(values), rel=1e-9)
    assert total(samples, "housing_prediction_value_bucket", le="2.0") == sum(value <= 2.0 for value in values)


def assert_the_log_survived(log_url: str, answers: Answers, killed_at: float, rows_in_flight: int) -> None:
    """The SQLite log passes its integrity check, holds one row per id, every row answered before the loss window,
    nothing but rows of requests in flight beyond what was answered, and takes new rows after the crash."""
    engine = make_engine(log_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalars().all() == ["ok"]
            logged = set(connection.execute(text("select request_id from predictions")).scalars())
            rows = connection.execute(text("select count(*) from predictions")).scalar_one()
    finally:
        engine.dispose()
    answered_at = {request_id: arrived for arrived, ids, _ in answers.answered for request_id in ids}
    lost = sorted(killed_at - answered_at[request_id] for request_id in answered_at.keys() - logged)
    print(f"kill -9 of both workers: {len(answered_at)} rows answered 200, {len(logged)} logged, {len(lost)} lost, the oldest "
          f"answered {max(lost, default=0):.3f} s before the kill (allowed: {LOSS_WINDOW} s)")
    assert rows == len(logged)
    assert len(logged - answered_at.keys()) <= rows_in_flight  # logged unanswered: only rows of requests in flight at the kill
    assert not lost or lost[-1] <= LOSS_WINDOW, lost[-5:]
    reopened = PredictionLog(log_url)
    reopened.append(prediction_rows([uuid.uuid4().hex for _ in range(3)], np.full((3, 8), 2.0), [2.0] * 3, model_name=NAME,
                                    model_version="1", latency_ms=1.0, created_at=reopened.timestamp(datetime.now(UTC))))
    assert reopened.flush() and count_rows(log_url)[0] == rows + 3
    reopened.close()


@SQLITE
def test_two_workers_count_every_answer_and_a_kill_9_mid_load_loses_only_the_last_flush(pipeline_run, tmp_path):
    """One real ``uvicorn --workers 2`` (Prometheus multiprocess mode, one SQLite log), counted against the clients:
    (1) 40 single rows and 8 batches of 100 on new connections: /metrics adds both workers' counters and histograms up
    to exactly what the clients received; (2) four clients load it, then the supervisor and both workers get SIGKILL
    mid-load: only rows answered within the last flush (and the flush in flight) are missing, the log is intact."""
    folder, log_url = tmp_path / "prometheus", f"sqlite:///{tmp_path / 'log.db'}"
    folder.mkdir()
    env = server_env(pipeline_run.env, HOUSING_PREDICTION_LOG_URL=log_url, HOUSING_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
                     HOUSING_LOG_FLUSH_INTERVAL=str(FLUSH_INTERVAL), PROMETHEUS_MULTIPROC_DIR=str(folder))
    rows = held_out_rows(pipeline_run, 100).to_dict(orient="records")
    bodies: list[Any] = [*rows[:40], *[rows] * 8]
    answers = Answers()

    def counted(i: int) -> None:
        for body in bodies[i::4]:
            with httpx.Client(base_url=server.url, timeout=30) as http:  # a new connection each: either worker takes it
                answers.post(http, body)

    def load(_: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while answers.post(http, rows[:LOAD_BATCH_ROWS]):
                time.sleep(LOAD_PAUSE)

    server = ApiServer(env, tmp_path / "server.log", extra_args=("--workers", "2")).start()
    try:
        assert len(wait_for(lambda: len(loaded_workers(server.url)) == 2 and loaded_workers(server.url), timeout=120, every=0.5)) == 2
        for thread in in_threads(4, counted):
            thread.join(120)
        assert answers.rows == 40 + 8 * 100 and not answers.failures, answers.failures
        assert_prometheus_adds_up(server.url, folder, answers, len(bodies))

        started = time.monotonic()
        loaders = in_threads(LOAD_CLIENTS, load)
        wait_for(lambda: answers.failures or (answers.rows >= KILL_AFTER_ROWS and time.monotonic() - started > 4 * FLUSH_INTERVAL),
                 timeout=120, every=0.02)
        killed_at = kill_9_all(server)  # requests in flight, rows in both buffers, maybe a flush running
    finally:
        server.stop()
    for thread in loaders:
        thread.join(60)
    assert not [failure for failure in answers.failures if failure[0] < killed_at], answers.failures
    assert_the_log_survived(log_url, answers, killed_at, rows_in_flight=LOAD_CLIENTS * LOAD_BATCH_ROWS)


# --- a prediction that can be neither written nor spilled is refused, not dropped ------------------------------------
@SQLITE
def test_predict_is_a_503_when_a_row_could_be_neither_written_nor_spilled(pipeline_run, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(pipeline_run.artifacts_dir, artifacts)
    (artifacts / "prediction_log_spill").write_text("a file where the spill folder should be")  # root can write anywhere else
    env = server_env(pipeline_run.env, HOUSING_ARTIFACTS_DIR=str(artifacts), HOUSING_LOG_BUFFER_MAX_ROWS="1000",  # the least allowed
                     HOUSING_PREDICTION_LOG_URL=f"sqlite:///{tmp_path / 'no-such-folder' / 'log.db'}")  # the database fails
    with ApiServer(env, tmp_path / "server.log") as server, httpx.Client(base_url=server.url, timeout=30) as http:
        server.wait_ready()
        answered = [http.post("/predict", json=[EXAMPLE_REQUEST] * 500) for _ in range(2)]
        assert [response.status_code for response in answered] == [200, 200]  # 1,000 rows: within the memory cap
        refused = http.post("/predict", json=EXAMPLE_REQUEST)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert "spill file cannot be written" in refused.json()["detail"], refused.json()
        batch = http.post("/predict", json=[EXAMPLE_REQUEST] * 30)
        assert batch.status_code == 503 and "spill file cannot be written" in batch.json()["detail"]
        assert http.get("/health").status_code == 200
    assert "Traceback" not in (tmp_path / "server.log").read_text()
