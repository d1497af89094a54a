"""Error without labels, end to end with real processes: the API serves the pipeline's production version,
simulate_traffic.py sends high-income districts and no label at all (--label-fraction 0), monitor.py estimates
the window's error with the version's logged loss estimator; the estimate is checked against the RMSE the
simulator measured against the true labels it kept, overall and per region, and read back from the decision
file, the MLflow monitoring run and the API's /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from housing.monitoring.loss_estimation import ARTIFACT_PATH
from tests.conftest import run_in_process
from tests.server import start_loop_server

REQUESTS = "1200"


def original_version(client: MlflowClient) -> str:
    """The lightgbm_spatial version of the pipeline's own training run (the first one: earlier tests may have
    retrained on inflated prices, a label shift no estimate can see)."""
    versions = [
        version
        for version in client.search_model_versions("name = 'CaliforniaHousing'")
        if version.tags.get("candidate") == "lightgbm_spatial"
    ]
    return str(min(int(version.version) for version in versions))


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_unlabelled_high_income_traffic_gets_an_estimated_rmse_close_to_the_true_one(mutable_run, tmp_path):
    client = MlflowClient(mutable_run.tracking_uri)
    version = original_version(client)
    run_id = client.get_model_version("CaliforniaHousing", version).run_id
    assert run_id is not None
    assert {Path(item.path).name for item in client.list_artifacts(run_id, ARTIFACT_PATH)} == {
        "loss_model.skops",
        "loss_estimator.json",
    }
    before = client.get_model_version_by_alias("CaliforniaHousing", "production").version
    client.set_registered_model_alias("CaliforniaHousing", "production", version)
    env, server = start_loop_server(mutable_run, tmp_path, "estimation", '["lightgbm_spatial"]')
    try:
        assert httpx.get(f"{server.url}/model", timeout=10).json()["version"] == version
        simulated = run_in_process(
            "simulate_traffic.py",
            "--url",
            server.url,
            "--scenario",
            "subpopulation",
            "--subpopulation",
            "high-income",
            "--label-fraction",
            "0",
            "--requests",
            REQUESTS,
            "--seed",
            "11",
            "--quiet",
            env=env,
        )
        assert simulated.returncode == 0, simulated.stdout + simulated.stderr
        assert "0 labels sent" in simulated.stdout
        found = re.search(r"RMSE against the true labels ([\d.]+)", simulated.stdout)
        assert found is not None, simulated.stdout
        true_rmse = float(found.group(1))
        true_by_segment = {
            name: float(value)
            for name, value in re.findall(
                r"(region: [A-Za-z ]+|income [^ ]+ [^ ]+) ([\d.]+) \(", simulated.stdout
            )
        }

        server.wait_logged()
        monitored = run_in_process("monitor.py", "--window", REQUESTS, "--dry-run", env=env)
        assert monitored.returncode == 0, monitored.stdout + monitored.stderr
        decision = json.loads(
            (Path(env["HOUSING_ARTIFACTS_DIR"]) / "reports" / "decision_latest.json").read_text()
        )
        assert (
            decision["labelled_rows"] == 0 and decision["rmse"] is None
        )  # nothing labelled: no realized error at all
        assert decision["estimated_over"] == "unlabelled" and decision["estimated_rows"] == int(REQUESTS)
        assert decision["estimated_rmse"] == pytest.approx(true_rmse, rel=0.15), (
            decision["estimated_rmse"],
            true_rmse,
        )
        low, high = decision["estimated_rmse_interval"]
        assert low < decision["estimated_rmse"] < high
        segments = decision["estimated_rmse_by_segment"]
        assert {"region: Bay Area", "region: Los Angeles", "income >= $60k"} <= set(segments)
        for name in ("region: Bay Area", "region: Los Angeles"):  # the two regions with hundreds of rows here
            assert segments[name]["rows"] >= 150
            assert segments[name]["rmse"] == pytest.approx(true_by_segment[name], rel=0.25), (
                name,
                segments[name],
                true_by_segment[name],
            )
        assert (
            f"estimated without labels ({REQUESTS[0]},{REQUESTS[1:]} unlabelled predictions): RMSE"
            in monitored.stdout
        )

        experiment = client.get_experiment_by_name("monitoring")
        assert experiment is not None
        run = client.search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
        )[0]
        assert run.data.metrics["estimated_rmse"] == pytest.approx(decision["estimated_rmse"], abs=1e-4)
        assert run.data.metrics["estimated_rmse_region_bay_area"] == pytest.approx(
            segments["region: Bay Area"]["rmse"], abs=1e-4
        )

        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        line = re.search(
            r'housing_monitor_estimated_rmse\{production_version="'
            + version
            + r'",segment="all"\} ([\d.e+-]+)',
            metrics,
        )
        assert line is not None, metrics[-3000:]
        assert float(line.group(1)) == pytest.approx(decision["estimated_rmse"], abs=1e-4)
        assert (
            'housing_monitor_estimated_rmse_low{production_version="'
            + version
            + '",segment="region: Bay Area"}'
            in metrics
        )
    finally:
        server.stop()
        client.set_registered_model_alias(
            "CaliforniaHousing", "production", before
        )  # later tests start where they would have
