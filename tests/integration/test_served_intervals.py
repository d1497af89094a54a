"""Prediction intervals as clients get them from a real server: each answer carries the range the version was
calibrated with, the log keeps it, labels sent back keep it calibrated across workers, and a version without a
usable interval still answers, saying why it has none."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sqlalchemy import text

from housing.api.main import create_app
from housing.config.settings import Settings
from housing.schema import FEATURE_NAMES
from housing.serving.intervals import serve_interval
from housing.serving.model_service import served_interval
from housing.store.interval_state import read_state
from housing.store.tables import make_engine
from housing.training.intervals import ARTIFACT_DIR, load_interval
from tests.helpers import held_out_rows, wait_for
from tests.server import FEEDBACK_HEADERS, ApiServer, server_env


def trained_bounds(pipeline_run, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The production version's predictions and ranges for ``rows``, computed offline from what training
    logged (the calibrated interval, no online state)."""
    client = MlflowClient(pipeline_run.tracking_uri)
    version = client.get_model_version_by_alias("CaliforniaHousing", "production")
    calibration = load_interval(client, version)
    assert calibration is not None
    values = rows.loc[:, list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    predicted = np.asarray(pipeline_run.load_version().predict(rows), dtype=np.float64)
    low, high = serve_interval(calibration, price_index=1.0).bounds(values, predicted)
    return predicted, low, high


def test_every_answer_carries_the_trained_interval_and_the_log_keeps_it(pipeline_run):
    rows = held_out_rows(pipeline_run, 40)
    predicted, low, high = trained_bounds(pipeline_run, rows)
    log_url = pipeline_run.backend.new_log_url("intervals")
    settings = pipeline_run.settings(prediction_log_url=log_url, log_flush_interval=0.05)
    with TestClient(create_app(settings)) as client:
        assert wait_for(lambda: client.get("/ready").status_code == 200)
        batch = client.post("/predict", json=rows.to_dict(orient="records")).json()["predictions"]
        single = [client.post("/predict", json=row).json() for row in rows.iloc[:5].to_dict(orient="records")]
    for answers, count in ((batch, 40), (single, 5)):
        np.testing.assert_allclose([a["MedHouseVal"] for a in answers], predicted[:count], rtol=1e-12)
        np.testing.assert_allclose([a["interval"]["low"] for a in answers], low[:count], rtol=0, atol=1e-9)
        np.testing.assert_allclose([a["interval"]["high"] for a in answers], high[:count], rtol=0, atol=1e-9)
        assert {a["interval"]["level"] for a in answers} == {0.9}
    engine = make_engine(log_url)
    with engine.connect() as connection:
        logged = dict(
            (row.request_id, (row.interval_low, row.interval_high))
            for row in connection.execute(
                text("SELECT request_id, interval_low, interval_high FROM predictions")
            )
        )
    engine.dispose()
    for answer in (*batch, *single):
        assert logged[answer["request_id"]] == pytest.approx(
            (answer["interval"]["low"], answer["interval"]["high"]), abs=1e-12
        )


def test_intervals_switched_off_answer_null_and_say_why(pipeline_run):
    settings = pipeline_run.settings(
        prediction_log_url=pipeline_run.backend.new_log_url("no-intervals"), serve_intervals=False
    )
    row = held_out_rows(pipeline_run, 1).iloc[0].to_dict()
    with TestClient(create_app(settings)) as client:
        assert wait_for(lambda: client.get("/ready").status_code == 200)
        single = client.post("/predict", json=row).json()
        batch = client.post("/predict", json=[row, row]).json()["predictions"]
    for answer in (single, *batch):
        assert answer["interval"] is None and "HOUSING_SERVE_INTERVALS" in answer["interval_note"]


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)  # a registry of its own: no backend path
def test_a_version_registered_without_an_interval_answers_null_and_says_why(pipeline_run, tmp_path):
    """A version registered before intervals existed (here: the production model registered again, with a
    training run that logged no calibration, or with no run at all) serves every request form with
    ``interval: null`` and one sentence saying why: never a 500."""
    source = MlflowClient(pipeline_run.tracking_uri)
    production = source.get_model_version_by_alias("CaliforniaHousing", "production")
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=source.get_model_version_download_uri("CaliforniaHousing", production.version),
        dst_path=str(tmp_path / "model"),
        tracking_uri=pipeline_run.tracking_uri,
    )
    tracking_uri = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    registry.create_registered_model("CaliforniaHousing")
    without_run = registry.create_model_version("CaliforniaHousing", source=str(folder))
    older_run = registry.create_run(registry.create_experiment("older training")).info.run_id
    registry.set_terminated(older_run)  # a training run that logged the model but no interval
    registry.create_model_version("CaliforniaHousing", source=str(folder), run_id=older_run)
    registry.set_registered_model_alias("CaliforniaHousing", "production", "2")
    assert served_interval(registry, without_run, 1.0) == (
        None,
        "version 1 was registered without a prediction interval",
    )
    settings = Settings(
        artifacts_dir=pipeline_run.artifacts_dir,
        tracking_uri=tracking_uri,
        prediction_log_url=f"sqlite:///{tmp_path / 'log.db'}",
    )
    row = held_out_rows(pipeline_run, 1).iloc[0].to_dict()
    query = "&".join(f"{name}={value}" for name, value in row.items())
    with TestClient(create_app(settings)) as client:
        assert wait_for(lambda: client.get("/ready").status_code == 200)
        responses = [
            client.post("/predict", json=row),
            client.post("/predict", json=[row, row]),
            client.post(f"/predict?{query}", content=b""),
        ]
    assert [response.status_code for response in responses] == [200, 200, 200], [r.text for r in responses]
    single, batch, by_query = (response.json() for response in responses)
    for answer in (single, *batch["predictions"], by_query):
        assert answer["interval"] is None, answer
        assert answer["interval_note"] == "version 2 was registered without a prediction interval", answer


def send_label(http: httpx.Client, request_id: str, actual: float) -> None:
    """POST /feedback until the prediction is in the log (404 until its worker flushed it)."""

    def sent() -> httpx.Response | None:
        response = http.post(
            "/feedback", json={"request_id": request_id, "actual": actual}, headers=FEEDBACK_HEADERS
        )
        return response if response.status_code in (200, 201) else None

    assert wait_for(sent), f"the label of {request_id} was not taken"


def test_labels_sent_back_move_every_workers_ranges_alike(mutable_run, tmp_path):
    """A market move: 60 labels 1.3x above the range of their prediction. Each label moves the shared state
    in the log's database; both workers re-read it, so whichever worker answers, a row gets the range the
    calibration and that state give: higher and wider than the calibrated one."""
    rows = held_out_rows(mutable_run, 300)
    predicted, low, high = trained_bounds(mutable_run, rows)
    chosen = rows[high < 3.0].iloc[:60]
    log_url = mutable_run.backend.new_log_url("interval-state")
    env = server_env(
        mutable_run.env,
        HOUSING_PREDICTION_LOG_URL=log_url,
        HOUSING_LOG_FLUSH_INTERVAL="0.05",
        HOUSING_SHARED_STATE_REFRESH_SECONDS="0.2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
    )
    with ApiServer(env, tmp_path / "server.log", extra_args=("--workers", "2")) as server:
        server.wait_ready(workers=2)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            response = http.post("/predict", json=chosen.to_dict(orient="records"))
            assert response.status_code == 200, response.text
            answers = response.json()
            version = answers["model_version"]
            for answer in answers["predictions"]:
                send_label(http, answer["request_id"], round(answer["interval"]["high"] * 1.3, 6))
            engine = make_engine(log_url)
            state = read_state(engine, version)
            engine.dispose()
            assert state.overall.labels == 60 and state.overall.shift > 0.1 and state.overall.width > 0.5

            client = MlflowClient(mutable_run.tracking_uri)
            calibration = load_interval(client, client.get_model_version("CaliforniaHousing", version))
            assert calibration is not None
            expected = serve_interval(calibration, price_index=1.0)
            expected.online = state
            at = rows.index.get_loc(chosen.index[0])
            probe = rows.iloc[[at]]
            expected_low, expected_high = (
                float(bound[0])
                for bound in expected.bounds(probe.to_numpy(dtype=np.float64), predicted[[at]])
            )

            def served_alike() -> bool:
                ranges = [
                    http.post("/predict", json=probe.iloc[0].to_dict()).json()["interval"] for _ in range(20)
                ]
                return all(
                    found["low"] == pytest.approx(expected_low, abs=1e-9)
                    and found["high"] == pytest.approx(expected_high, abs=1e-9)
                    for found in ranges
                )

            assert wait_for(served_alike, timeout=30), "the workers do not serve the state's range"
    assert expected_high > high[at] and expected_high - expected_low > 1.5 * (high[at] - low[at])


def test_a_version_whose_interval_was_tampered_with_serves_without_one(mutable_run):
    """An interval file with impossible numbers (a level of 7) is refused in one sentence; the version still
    loads and predicts, its answers saying why there is no range. The file is restored afterwards."""
    client = MlflowClient(mutable_run.tracking_uri)
    production = client.get_model_version_by_alias("CaliforniaHousing", "production")
    other = next(
        v
        for v in client.search_model_versions("name = 'CaliforniaHousing'")
        if v.version != production.version and v.run_id
    )
    run_id = other.run_id
    assert run_id is not None
    with tempfile.TemporaryDirectory() as folder:
        original = Path(client.download_artifacts(run_id, f"{ARTIFACT_DIR}/interval.json", folder))
        kept = original.read_text()
        tampered = Path(folder) / "tampered" / "interval.json"
        tampered.parent.mkdir()
        tampered.write_text(json.dumps({**json.loads(kept), "level": 7}))
        client.log_artifact(run_id, str(tampered), ARTIFACT_DIR)
        try:
            interval, note = served_interval(client, other, 1.0)
        finally:
            restored = Path(folder) / "restored" / "interval.json"
            restored.parent.mkdir()
            restored.write_text(kept)
            client.log_artifact(run_id, str(restored), ARTIFACT_DIR)
    assert interval is None and note is not None
    assert "inconsistent numbers" in note and f"version {other.version}" in note
    assert served_interval(client, other, 1.0)[0] is not None  # restored: served with its range again
