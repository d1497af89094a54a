"""The loop cannot be steered and settles, with real processes on both backends: label poisoning with and
without a token never moves production, and a persistent shift is retrained on once, not every round."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import PipelineRun, run_in_process
from tests.helpers import wait_for
from tests.server import FEEDBACK_HEADERS, ApiServer, start_loop_server, wait_logged

WINDOW = "1500"
MODEL = "CaliforniaHousing"
BAY_AREA_DISTRICT = {
    "MedInc": 3.5,
    "HouseAge": 28.0,
    "AveRooms": 5.0,
    "AveBedrms": 1.04,
    "Population": 1500.0,
    "AveOccup": 3.0,
    "Latitude": 37.8,
    "Longitude": -122.4,
}
"""The district the poisoning attack labels again and again."""


def monitor(env: dict[str, str], *args: str) -> str:
    result = run_in_process("monitor.py", "--window", WINDOW, *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def simulate(env: dict[str, str], url: str, *args: str) -> None:
    result = run_in_process(
        "simulate_traffic.py", "--url", url, "--concurrency", "8", "--quiet", *args, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wait_logged(url)


def production(env: dict[str, str]) -> str:
    return str(
        MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(MODEL, "production").version
    )


def wait_until_served(url: str, version: str) -> None:
    served = wait_for(lambda: httpx.get(f"{url}/model", timeout=10).json()["version"] == version)
    assert served, f"the API did not switch to version {version}"


@pytest.fixture
def loop_env(mutable_run: PipelineRun, tmp_path: Path) -> Iterator[tuple[dict[str, str], ApiServer]]:
    """The mutable registry, a private copy of its artifacts, a fresh prediction log, an API serving it;
    retrains train the promoted candidate only (the gate, the evidence and the lock are what these tests are
    about)."""
    env, server = start_loop_server(mutable_run, tmp_path, "integrity", '["lightgbm_spatial"]')
    yield env, server
    server.stop()


def test_label_poisoning_never_moves_production(loop_env):
    env, server = loop_env
    before = production(env)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        served = http.post("/predict", json=[BAY_AREA_DISTRICT] * 2000)
        assert served.status_code == 200
        ids = [row["request_id"] for row in served.json()["predictions"]]
        server.wait_logged()
        price_before = served.json()["predictions"][0]["MedHouseVal"]
        for request_id in ids[-50:]:  # no credentials: refused, nothing stored
            assert http.post("/feedback", json={"request_id": request_id, "actual": 5.0}).status_code == 401
            wrong = http.post(
                "/feedback",
                json={"request_id": request_id, "actual": 5.0},
                headers={"Authorization": "Bearer guess"},
            )
            assert wrong.status_code == 403
        out = monitor(env, "--window", "2000")  # the whole batch: its rows share one time, ties unordered
        assert "decision: ALERT, NO RETRAIN" in out and "retrained: training run" not in out, out
        assert "only 0 labelled districts that no model has learnt from; 200 more are needed" in out, out
        for request_id in ids[
            -50:
        ]:  # a labeller's valid token: stored, but 50 labels of one district are one district
            assert (
                http.post(
                    "/feedback", json={"request_id": request_id, "actual": 5.0}, headers=FEEDBACK_HEADERS
                ).status_code
                == 201
            )
        out = monitor(env, "--window", "2000")  # the whole batch: its rows share one time, ties unordered
        assert "decision: ALERT, NO RETRAIN" in out and "retrained: training run" not in out, out
        assert (
            "not retraining: only 1 labelled districts that no model has learnt from; 199 more are needed"
            " before a retrain" in out
        )
        assert production(env) == before
        again = http.post("/predict", json=BAY_AREA_DISTRICT).json()
        assert again["model_version"] == before and again["MedHouseVal"] == pytest.approx(price_before)


def test_a_persistent_shift_is_retrained_on_once(loop_env):
    env, server = loop_env
    simulate(
        env,
        server.url,
        "--scenario",
        "subpopulation",
        "--subpopulation",
        "bay-area",
        "--requests",
        "2000",
        "--seed",
        "11",
    )
    first = monitor(env)
    assert "decision: RETRAIN" in first and "retrained: training run" in first, first
    wait_until_served(server.url, production(env))
    simulate(
        env,
        server.url,
        "--scenario",
        "subpopulation",
        "--subpopulation",
        "bay-area",
        "--requests",
        "2000",
        "--seed",
        "12",
    )
    second = monitor(env)
    assert "decision: RETRAIN" not in second and "retrained: training run" not in second, second
