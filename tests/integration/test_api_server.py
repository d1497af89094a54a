"""The real server under uvicorn: hot reload under load without a failed request, and a durable log."""

from __future__ import annotations

import threading
import time

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient
from sqlalchemy import text

from housing.artifacts import load_pickle
from housing.schema import EXAMPLE_REQUEST
from housing.store import make_engine
from tests.server import GRACEFUL_EXIT, ApiServer, server_env


def logged_rows(log_url: str) -> int:
    engine = make_engine(log_url)
    with engine.connect() as connection:
        count = connection.execute(text("select count(*) from predictions")).scalar_one()
    engine.dispose()
    return count


def test_alias_move_under_load_switches_without_a_failed_request(mutable_run, tmp_path):
    log_url = mutable_run.backend.new_log_url("alias")
    env = server_env(mutable_run.env, HOUSING_PREDICTION_LOG_URL=log_url, HOUSING_RELOAD_INTERVAL="0.5")
    rows = load_pickle(mutable_run.artifacts_dir / "split" / "X_test.pkl").iloc[:25].to_dict(orient="records")
    client = MlflowClient(mutable_run.tracking_uri)
    old = client.get_model_version_by_alias("CaliforniaHousing", "production")
    new = next(v for v in client.search_model_versions("name = 'CaliforniaHousing'") if v.version != old.version)

    server = ApiServer(env, tmp_path / "server.log").start()
    try:
        server.wait_ready()
        predicted = 0
        with httpx.Client(base_url=server.url, timeout=30) as http:
            single = http.post("/predict", json=EXAMPLE_REQUEST)
            assert single.status_code == 200 and single.json()["model_version"] == str(old.version)
            batch = http.post("/predict", json=rows)
            assert batch.status_code == 200 and len(batch.json()["predictions"]) == 25
            feedback = http.post("/feedback", json={"request_id": single.json()["request_id"], "actual": 2.0})
            assert feedback.status_code == 201
            predicted += 26

        results: list[tuple[int, str | None, int]] = []
        stop = threading.Event()

        def keep_sending(batch_every: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                n = 0
                while not stop.is_set():
                    n += 1
                    body = rows[:3] if n % batch_every == 0 else EXAMPLE_REQUEST
                    response = http.post("/predict", json=body)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    results.append((response.status_code, version, 3 if isinstance(body, list) else 1))

        threads = [threading.Thread(target=keep_sending, args=(every,)) for every in (5, 7)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        client.set_registered_model_alias("CaliforniaHousing", "production", new.version)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(v == str(new.version) for _, v, _ in results[-5:]):
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        exit_code = server.stop()
        client.set_registered_model_alias("CaliforniaHousing", "production", old.version)  # leave the registry as found

    assert exit_code in GRACEFUL_EXIT
    statuses = [status for status, _, _ in results]
    assert statuses and all(status == 200 for status in statuses), f"failed requests: {[s for s in statuses if s != 200]}"
    versions = [version for _, version, _ in results]
    assert versions[0] == str(old.version) and versions[-1] == str(new.version)
    first_new = versions.index(str(new.version))
    assert str(old.version) not in versions[first_new + 10 :]  # after the switch (10 in flight), only the new model
    predicted += sum(rows_sent for _, _, rows_sent in results)
    assert logged_rows(log_url) == predicted


def test_graceful_restart_keeps_every_logged_prediction(pipeline_run, tmp_path):
    log_url = pipeline_run.backend.new_log_url("restart")
    env = server_env(pipeline_run.env, HOUSING_PREDICTION_LOG_URL=log_url, HOUSING_LOG_FLUSH_INTERVAL="30")
    request_ids = []
    with ApiServer(env, tmp_path / "server.log") as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(40):
                body = {**EXAMPLE_REQUEST, "MedInc": 1.0 + i / 10}
                request_ids.append(http.post("/predict", json=body).json()["request_id"])
            batch = http.post("/predict", json=[EXAMPLE_REQUEST] * 10).json()["predictions"]
            request_ids += [p["request_id"] for p in batch]
        # the flush interval is 30 s: everything is still buffered when the shutdown starts
    assert server.process.returncode in GRACEFUL_EXIT
    assert logged_rows(log_url) == 50

    with ApiServer(env, tmp_path / "server2.log") as server:
        server.wait_ready()
        response = httpx.post(f"{server.url}/feedback", json={"request_id": request_ids[7], "actual": 1.9})
        assert response.status_code == 201
    engine = make_engine(log_url)
    with engine.connect() as connection:
        frame = pd.read_sql(text('select p."MedInc", f.actual from predictions p join feedback f using (request_id)'), connection)
    engine.dispose()
    assert frame.to_dict(orient="records") == [{"MedInc": pytest.approx(1.7), "actual": 1.9}]
