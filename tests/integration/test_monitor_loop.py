"""The closed loop with real processes: API server, traffic simulator, monitor, retraining, hot reload."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from housing.data.artifacts import load_pickle
from housing.data.digests import row_digests
from housing.registry.ledger import read_history
from housing.store.tables import make_engine
from tests.conftest import PROJECT_DIR, run_in_process
from tests.helpers import wait_for
from tests.server import start_loop_server, wait_logged

WINDOW = "1000"
"""Requests per scenario and the monitor's window (the servers decide from 1,000 predictions)."""


def simulate(
    env: dict[str, str], url: str, scenario: str, seed: int, inflation: float = 1.3, requests: str = WINDOW
) -> float:
    result = run_in_process(
        "simulate_traffic.py",
        "--url",
        url,
        "--scenario",
        scenario,
        "--requests",
        requests,
        "--concurrency",
        "8",
        "--seed",
        str(seed),
        "--inflation",
        str(inflation),
        "--quiet",
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wait_logged(url)
    match = re.search(r"RMSE against the true labels ([\d.]+)", result.stdout)
    assert match is not None, result.stdout
    return float(match.group(1))


def monitor(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = run_in_process("monitor.py", "--window", WINDOW, *args, env=env)
    return result.returncode, result.stdout + result.stderr


def monitoring_runs(client: MlflowClient) -> dict[str, Run]:
    """The monitor's rounds in the store, oldest first, by run id."""
    experiment = client.get_experiment_by_name("monitoring")
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return {run.info.run_id: run for run in runs}


def served_version(url: str) -> str:
    return httpx.get(f"{url}/model", timeout=10).json()["version"]


@pytest.fixture
def loop_env(mutable_run, tmp_path):
    """The mutable registry, a private copy of its artifacts (reports, retraining sets), an API serving it."""
    env, server = start_loop_server(mutable_run, tmp_path, "loop", '["lightgbm_spatial"]')
    yield env, server
    server.stop()


def monitors_at_once(env: dict[str, str], count: int = 2) -> list[str]:
    """``count`` monitor.py processes started together; their outputs (each must exit 0)."""
    command = [sys.executable, str(PROJECT_DIR / "monitor.py"), "--window", WINDOW]
    processes = [
        subprocess.Popen(
            command, env=env, cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(count)
    ]
    outputs = [process.communicate(timeout=900)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    return outputs


def wait_until_served(url: str, version: str) -> None:
    assert wait_for(lambda: served_version(url) == version), f"the API did not serve version {version}"


def test_baseline_keeps_and_market_inflation_retrains_once_and_the_api_follows(loop_env):
    env, server = loop_env
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    rounds_before = monitoring_runs(client)
    first_version = served_version(server.url)
    engine = make_engine(env["HOUSING_PREDICTION_LOG_URL"])
    ledger_before = len(read_history(engine, "CaliforniaHousing"))

    baseline_rmse = simulate(env, server.url, "baseline", seed=1)
    code, out = monitor(env)
    assert code == 0, out
    assert "decision: NO RETRAIN" in out and baseline_rmse < 0.5
    held = re.search(r"prediction interval \(90%\): held ([\d.]+)% of ([\d,]+) labelled predictions", out)
    assert held is not None, out  # the ranges served with real traffic hold their level
    assert abs(float(held.group(1)) - 90) <= 4 and "the prediction interval held" not in out
    first = json.loads((Path(env["HOUSING_ARTIFACTS_DIR"]) / "reports" / "decision_latest.json").read_text())
    # the RMSE train.py logged on the test split (the version's eval_rmse tag is re-scored by every promote,
    # on whatever evaluation data that promote had, so it is not a fixed test-split figure)
    training_run_id = client.get_model_version("CaliforniaHousing", first_version).run_id
    assert training_run_id is not None
    test_split_rmse = client.get_run(training_run_id).data.metrics["rmse"]
    assert first["error_reference"] == "held-out: the test split (4,128 rows)"
    assert first["reference_rmse"] == pytest.approx(
        test_split_rmse, rel=0.05
    )  # not the in-sample error of the training split

    simulate(env, server.url, "market-inflation", seed=2)
    outputs = monitors_at_once(env)  # two monitors on the same evidence: exactly one retrains
    retrained = [out for out in outputs if "retrained: training run" in out]
    assert len(retrained) == 1, outputs
    other = next(out for out in outputs if "retrained: training run" not in out)
    assert "not retrained: " in other and "this monitor does not retrain" in other, other
    out = retrained[0]
    assert "decision: RETRAIN" in out and "RMSE" in out.split("decision: RETRAIN")[1]
    assert "production moved to version" in out and "beyond noise" in out, out
    # prices moved, the ranges did not (the labels came back after the traffic): a reason of its own
    assert "the prediction interval held" in out.split("decision: RETRAIN")[1], out
    new_version = str(client.get_model_version_by_alias("CaliforniaHousing", "production").version)
    assert new_version != first_version
    history = read_history(engine, "CaliforniaHousing")
    assert (
        len(history) == ledger_before + 1
        and history[-1].to_version == new_version
        and history[-1].from_version == first_version
    )
    assert history[-1].command == "monitor.py (retrain)" and history[-1].evidence["gate"]["low"] > 0
    training_run = client.get_run(
        client.get_model_version("CaliforniaHousing", new_version).tags["training_run_id"]
    )
    assert "new labelled production rows" in training_run.data.tags["training_data"]
    found = re.search(r"retrained: training run \w+, data in (\S+)", out)
    assert found is not None, out
    saved = Path(found.group(1))
    manifest = json.loads(
        (saved / "manifest.json").read_text()
    )  # the retraining set on disk, as the run records it
    assert saved.parent == Path(env["HOUSING_ARTIFACTS_DIR"]) / "retraining" and re.fullmatch(
        r"\d{8}T\d{6}Z", saved.name
    )
    assert manifest["sha256"] == training_run.data.tags["data_sha256"] and manifest["provenance"]
    assert (
        manifest["rows"]
        == len(load_pickle(saved / "X_train.pkl"))
        == len(load_pickle(saved / "train_weight.pkl"))
    )
    assert {"X_eval.pkl", "y_eval.pkl", "y_train.pkl"} <= {path.name for path in saved.iterdir()}
    assert float(training_run.data.tags["price_index"]) == pytest.approx(
        1.3, rel=0.05
    )  # the market move, learnt

    wait_until_served(server.url, new_version)
    # The new version's error on districts it never trained on: held-out test rows absent from its training
    # set (the traffic it learnt from was drawn from the same 4,128 test rows), at today's price level (the
    # market's x1.3).
    split = Path(env["HOUSING_ARTIFACTS_DIR"]) / "split"
    x_test, y_test = load_pickle(split / "X_test.pkl"), load_pickle(split / "y_test.pkl")
    unseen = ~row_digests(x_test).isin(set(row_digests(load_pickle(saved / "X_train.pkl")))).to_numpy()
    assert unseen.sum() >= 500, unseen.sum()
    rows, truth = x_test[unseen].iloc[:1000], y_test[unseen].iloc[:1000].to_numpy() * 1.3
    answered = httpx.post(f"{server.url}/predict", json=rows.to_dict(orient="records"), timeout=60).json()
    assert answered["model_version"] == new_version
    unseen_rmse = float(
        np.sqrt(np.mean(np.square(np.array([row["MedHouseVal"] for row in answered["predictions"]]) - truth)))
    )
    assert unseen_rmse <= 0.55, unseen_rmse  # the first version: ~0.85 on inflated prices

    simulate(env, server.url, "market-inflation", seed=3)  # inflated traffic, judged by the monitor
    code, out = monitor(env, "--dry-run", "--window", "1000")
    assert code == 0, out
    assert f"served by production version {new_version}" in out
    rmse = float(re.search(r"labelled traffic: RMSE ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latest = json.loads((Path(env["HOUSING_ARTIFACTS_DIR"]) / "reports" / "decision_latest.json").read_text())
    assert latest["rmse"] == pytest.approx(rmse, abs=1e-4) and latest["labelled_rows"] == 1000
    # the retrained version's ranges, calibrated at the new price level, hold inflated prices again
    assert latest["interval_coverage"]["rows"] == 1000 and latest["interval_coverage"]["coverage"] >= 0.85
    assert {"r2", "drift_share", "decision", "new_labelled_districts", "production_version"} <= set(latest)
    assert latest["error_reference"].startswith("held-out: its evaluation data") and "held out" in out

    shown = run_in_process("promote.py", "--history", env=env)
    assert shown.returncode == 0 and f"{first_version} -> {new_version}" in shown.stdout, (
        shown.stdout + shown.stderr
    )
    rolled = run_in_process("promote.py", "--rollback", env=env)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert str(client.get_model_version_by_alias("CaliforniaHousing", "production").version) == first_version
    wait_until_served(server.url, first_version)
    assert read_history(engine, "CaliforniaHousing")[-1].reason == "rollback"
    engine.dispose()

    experiment = client.get_experiment_by_name("monitoring")
    assert experiment is not None
    runs = [run for run_id, run in monitoring_runs(client).items() if run_id not in rounds_before]
    decisions = [
        run.data.tags["decision"] for run in runs
    ]  # this test's rounds (other tests share the store)
    assert decisions[0] == "no retrain" and decisions[1:3] == ["retrain", "retrain"], decisions


@pytest.mark.parametrize(
    "backend_name", ["sqlite"], indirect=True
)  # a failing fit is the same on both stores; PostgreSQL: the test above
def test_a_failing_retrain_leaves_production_alone(loop_env, tmp_path):
    env, server = loop_env
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    before = client.get_model_version_by_alias("CaliforniaHousing", "production").version
    simulate(env, server.url, "market-inflation", seed=4)
    broken = dict(env, HOUSING_CANDIDATES_PATH=str(tmp_path / "missing.yaml"))
    code, out = monitor(broken)
    assert code == 1, out
    assert "decision was to retrain and retraining failed, production is unchanged" in out
    assert "Traceback" not in out
    assert client.get_model_version_by_alias("CaliforniaHousing", "production").version == before
    code, out = monitor(env, "--dry-run")
    assert code == 0 and "decision: RETRAIN" in out and "--dry-run: not retraining" in out
    assert client.get_model_version_by_alias("CaliforniaHousing", "production").version == before
