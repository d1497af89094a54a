"""Champion and challenger on live traffic, with a real server, real districts and real labels: a challenger
in shadow changes no response and is logged beside every one; the canary's share and stickiness; promotion
from live paired evidence: a clearly worse challenger dropped, a better one promoted by the monitor (ledger
entry, API switch), one without evidence dropped after the wait."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sqlalchemy import text

from housing.data.dataset import load_split
from housing.registry.ledger import read_history
from housing.registry.versions import load_model_version
from housing.schema import FEATURE_NAMES
from housing.store.tables import make_engine
from tests.conftest import PipelineRun, run_in_process
from tests.helpers import wait_for
from tests.server import FEEDBACK_HEADERS, ApiServer, start_loop_server, wait_logged

MODEL = "CaliforniaHousing"


class Registry:
    """The mutable run's registry: versions by candidate, and its aliases put back as found."""

    def __init__(self, run: PipelineRun) -> None:
        self.client = MlflowClient(run.tracking_uri)
        self.by_candidate = {
            v.tags["candidate"]: str(v.version)
            for v in self.client.search_model_versions(f"name = '{MODEL}'")
        }
        self.found = self.aliases()

    def set(self, alias: str, candidate: str) -> str:
        self.client.set_registered_model_alias(MODEL, alias, self.by_candidate[candidate])
        return self.by_candidate[candidate]

    def aliases(self) -> dict[str, str]:
        return {
            alias: str(version) for alias, version in self.client.get_registered_model(MODEL).aliases.items()
        }

    def restore(self) -> None:
        for alias in ("production", "staging"):
            if alias in self.found:
                self.client.set_registered_model_alias(MODEL, alias, self.found[alias])
            elif alias in self.aliases():
                self.client.delete_registered_model_alias(MODEL, alias)


def districts(run: PipelineRun, count: int) -> list[dict[str, float]]:
    """``count`` real, different districts of the test split."""
    x = load_split(run.artifacts_dir / "split").x_test.iloc[:count]
    return [
        dict(zip(FEATURE_NAMES, map(float, row), strict=True)) for row in x[list(FEATURE_NAMES)].to_numpy()
    ]


def wait_for_challenger(url: str, version: str | None) -> None:
    def loaded() -> bool:
        return (httpx.get(f"{url}/model", timeout=10).json()["challenger"] or {}).get("version") == version

    assert wait_for(loaded), f"the API did not load challenger {version}"


def predict_all(
    url: str, rows: list[dict[str, float]], keys: list[str] | None = None
) -> list[dict[str, Any]]:
    """POST every row (4 clients at a time); the response bodies in order."""

    def send(index: int) -> dict[str, Any]:
        headers = {"X-Routing-Key": keys[index]} if keys else {}
        response = http.post("/predict", json=rows[index], headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    with httpx.Client(base_url=url, timeout=30) as http, ThreadPoolExecutor(4) as pool:
        return list(pool.map(send, range(len(rows))))


def logged(log_url: str, request_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    engine = make_engine(log_url)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "select request_id, model_version, served_alias, prediction, shadow_prediction, "
                "shadow_model_version from predictions"
            )
        ).all()
    engine.dispose()
    wanted = set(request_ids)
    return {row[0]: tuple(row[1:]) for row in rows if row[0] in wanted}


@pytest.fixture
def registry(mutable_run: PipelineRun) -> Iterator[Registry]:
    found = Registry(mutable_run)
    yield found
    found.restore()


def test_a_challenger_in_shadow_changes_no_response_and_is_logged_beside_every_one(
    mutable_run, registry, tmp_path
):
    rows = districts(mutable_run, 1000)
    registry.client.delete_registered_model_alias(MODEL, "staging")
    env, server = start_loop_server(mutable_run, tmp_path, "shadow", '["lightgbm_spatial"]')
    try:
        without = predict_all(server.url, rows)
        linear = registry.set("staging", "linear_regression")
        wait_for_challenger(server.url, linear)
        with_shadow = predict_all(server.url, rows)
    finally:
        server.stop()  # flushes the log (and the shadow backlog) before exiting
    assert [(r["MedHouseVal"], r["model_version"]) for r in with_shadow] == [
        (r["MedHouseVal"], r["model_version"]) for r in without
    ]
    assert {r["model_version"] for r in without} == {registry.found["production"]}

    before, after = (
        logged(env["HOUSING_PREDICTION_LOG_URL"], [r["request_id"] for r in without]),
        logged(env["HOUSING_PREDICTION_LOG_URL"], [r["request_id"] for r in with_shadow]),
    )
    assert len(before) == len(after) == 1000
    assert {row[3:] for row in before.values()} == {(None, None)}
    assert {(row[0], row[1], row[4]) for row in after.values()} == {
        (registry.found["production"], "production", linear)
    }
    linear_model = load_model_version(registry.client, MODEL, linear)
    expected = linear_model.predict(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    shadow = np.array([after[r["request_id"]][3] for r in with_shadow])
    np.testing.assert_allclose(shadow, expected, rtol=1e-9)  # the challenger's own predictions, row by row
    served = np.array([after[r["request_id"]][2] for r in with_shadow])
    np.testing.assert_allclose(served, [r["MedHouseVal"] for r in with_shadow], rtol=0)


@pytest.fixture
def canary_server(
    mutable_run: PipelineRun, registry: Registry, tmp_path: Path
) -> Iterator[tuple[dict[str, str], ApiServer]]:
    """An API over the mutable registry answering 10 % of requests with the challenger."""
    env, server = start_loop_server(
        mutable_run, tmp_path, "canary", '["lightgbm_spatial"]', HOUSING_CANARY_PERCENT="10"
    )
    yield env, server
    server.stop()


def test_the_canary_answers_its_share_and_a_key_keeps_its_model(mutable_run, registry, canary_server):
    env, server = canary_server
    linear = registry.set("staging", "linear_regression")
    wait_for_challenger(server.url, linear)
    shown = httpx.get(f"{server.url}/model", timeout=10).json()["challenger"]
    assert shown["mode"] == "shadow + canary" and shown["canary_percent"] == 10 and shown["version"] == linear
    rows = districts(mutable_run, 1000) * 5
    keys = [f"client-{i}" for i in range(5000)]
    answers = predict_all(server.url, rows, keys)
    by_challenger = [r["model_version"] == linear for r in answers]
    assert 0.08 <= np.mean(by_challenger) <= 0.12, np.mean(by_challenger)
    again = predict_all(server.url, rows[:500], keys[:500])
    assert [r["model_version"] for r in again] == [
        r["model_version"] for r in answers[:500]
    ]  # the same key, the same model
    answered_by_challenger = sum(by_challenger) + sum(r["model_version"] == linear for r in again)
    metrics = wait_for(
        lambda: (found := prometheus(server.url)).get("housing_shadow_rows_total", 0) >= 5500 and found
    )  # the shadow thread catches up
    assert metrics['housing_answered_rows_total{alias="staging"}'] == answered_by_challenger
    assert metrics['housing_answered_rows_total{alias="production"}'] == 5500 - answered_by_challenger
    assert (
        metrics["housing_shadow_rows_total"] == 5500
        and metrics.get('housing_shadow_failures_total{reason="error"}', 0) == 0
    )
    assert (
        metrics["housing_shadow_abs_difference_count"] == 5500
        and metrics["housing_shadow_abs_difference_sum"] > 0
    )
    assert metrics["housing_shadow_predict_seconds_count"] >= 1
    server.stop()
    log = logged(env["HOUSING_PREDICTION_LOG_URL"], [r["request_id"] for r in answers])
    production = registry.found["production"]
    for answer in answers[:1000]:
        version, alias, prediction, shadow, shadow_version = log[answer["request_id"]]
        assert prediction == answer["MedHouseVal"] and version == answer["model_version"]
        assert (alias, shadow_version) == (
            ("staging", production) if version == linear else ("production", linear)
        )
        assert shadow is not None


def prometheus(url: str) -> dict[str, float]:
    """The /metrics samples by name (with labels), this worker's (one worker)."""
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line and not line.startswith("#")
    }


def label_all(
    url: str, answers: list[dict[str, Any]], truth: list[float], token_headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        for answer, actual in zip(answers, truth, strict=True):
            response = http.post(
                "/feedback",
                json={"request_id": answer["request_id"], "actual": actual},
                headers=token_headers,
            )
            assert response.status_code in (200, 201), response.text
    wait_logged(url)


def truths(run: PipelineRun, count: int) -> list[float]:
    return [float(v) for v in load_split(run.artifacts_dir / "split").y_test.iloc[:count]]


def test_live_evidence_drops_a_worse_challenger_promotes_a_better_one_and_expires_one_without_evidence(
    mutable_run, registry, canary_server
):
    env, server = canary_server
    rows, labels = districts(mutable_run, 400), truths(mutable_run, 400)
    # a clearly worse challenger: dropped on the live evidence
    linear = registry.set("staging", "linear_regression")
    wait_for_challenger(server.url, linear)
    label_all(server.url, predict_all(server.url, rows), labels, FEEDBACK_HEADERS)
    result = run_in_process("promote.py", "--from-shadow", env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "worse beyond noise on live traffic" in result.stdout and "the challenger is dropped" in result.stdout
    )
    assert "staging" not in registry.aliases()
    assert registry.client.get_model_version(MODEL, linear).tags["shadow_verdict"].startswith("reject:")
    wait_for_challenger(server.url, None)

    # a better challenger against a weaker champion: the monitor promotes it, with the live evidence in the
    # ledger
    champion = registry.set("production", "gradient_boosting")
    better = registry.set("staging", "lightgbm_spatial")
    wait_for_challenger(server.url, better)
    label_all(server.url, predict_all(server.url, rows), labels, FEEDBACK_HEADERS)
    monitor = run_in_process("monitor.py", "--window", "400", env=env)
    assert monitor.returncode == 0, monitor.stderr
    kind = registry.client.get_experiment_by_name("monitoring").tags.get("mlflow.experimentKind")
    assert kind == "custom_model_development"  # the MLflow UI opens the monitoring experiment on its runs
    assert (
        f"challenger version {better} against production version {champion}: better beyond noise"
        in monitor.stdout
    )
    assert registry.aliases()["production"] == better
    engine = make_engine(env["HOUSING_PREDICTION_LOG_URL"])
    entry = read_history(engine, MODEL)[-1]
    engine.dispose()
    assert (entry.from_version, entry.to_version, entry.command) == (champion, better, "monitor.py")
    assert entry.evidence["live"]["low"] > 0 and entry.evidence["live"]["rows"] >= 100
    assert entry.evidence["live_rmse"]["challenger"] < entry.evidence["live_rmse"]["champion"]
    assert wait_for(lambda: httpx.get(f"{server.url}/model", timeout=10).json()["version"] == better)

    # a challenger with too little evidence once the wait is over: dropped, saying how many labels it lacked
    waiting = registry.set("staging", "hist_gradient_boosting")
    wait_for_challenger(server.url, waiting)
    label_all(server.url, predict_all(server.url, rows[:20]), labels[:20], FEEDBACK_HEADERS)
    result = run_in_process("promote.py", "--from-shadow", env=env)
    assert (
        "needs" in result.stdout
        and "more labelled requests" in result.stdout
        and "staging" in registry.aliases()
    )
    result = run_in_process("promote.py", "--from-shadow", env={**env, "HOUSING_SHADOW_MAX_WAIT_HOURS": "0"})
    assert result.returncode == 0, result.stderr
    assert (
        "only 20 paired labelled requests" in result.stdout and "the challenger is dropped" in result.stdout
    )
    assert "staging" not in registry.aliases()
