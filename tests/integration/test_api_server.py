"""The real server under uvicorn: hot reload under load without a failed request, and a durable log."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient
from sqlalchemy import text

from housing.data.artifacts import load_pickle
from housing.schema import EXAMPLE_REQUEST
from housing.store.log_reads import count_rows
from housing.store.tables import make_engine
from tests.helpers import wait_for
from tests.server import FEEDBACK_HEADERS, GRACEFUL_EXIT, ApiServer, LoadGenerator, server_env


def test_alias_move_under_load_switches_without_a_failed_request(mutable_run, tmp_path):
    log_url = mutable_run.backend.new_log_url("alias")
    env = server_env(mutable_run.env, HOUSING_PREDICTION_LOG_URL=log_url, HOUSING_RELOAD_INTERVAL="0.5")
    rows = load_pickle(mutable_run.artifacts_dir / "split" / "X_test.pkl").iloc[:25].to_dict(orient="records")
    client = MlflowClient(mutable_run.tracking_uri)
    old = client.get_model_version_by_alias("CaliforniaHousing", "production")
    new = next(
        v for v in client.search_model_versions("name = 'CaliforniaHousing'") if v.version != old.version
    )

    server = ApiServer(env, tmp_path / "server.log").start()
    try:
        server.wait_ready()
        predicted = 0
        with httpx.Client(base_url=server.url, timeout=30) as http:
            single = http.post("/predict", json=EXAMPLE_REQUEST)
            assert single.status_code == 200 and single.json()["model_version"] == str(old.version)
            batch = http.post("/predict", json=rows)
            assert batch.status_code == 200 and len(batch.json()["predictions"]) == 25
            feedback = http.post(
                "/feedback",
                json={"request_id": single.json()["request_id"], "actual": 2.0},
                headers=FEEDBACK_HEADERS,
            )
            assert feedback.status_code == 201
            predicted += 26

        with LoadGenerator(server.url, EXAMPLE_REQUEST, rows[:3], batch_every=(5, 7)) as load:
            wait_for(lambda: len(load.results) >= 100)  # under load before the switch
            client.set_registered_model_alias("CaliforniaHousing", "production", new.version)
            switched = wait_for(lambda: str(new.version) in load.versions[-5:])
            assert switched, "the API did not switch to the new version"
            answered = len(load.results)
            wait_for(lambda: len(load.results) >= answered + 100)  # and under load after it
    finally:
        exit_code = server.stop()
        client.set_registered_model_alias(
            "CaliforniaHousing", "production", old.version
        )  # leave the registry as found

    assert exit_code in GRACEFUL_EXIT
    assert load.results and not load.failures, load.failures[:5]  # client errors and non-200s alike
    versions = load.versions
    assert versions[0] == str(old.version) and versions[-1] == str(new.version)
    assert set(versions) == {str(old.version), str(new.version)}
    # The one worker swaps its model reference once; a request whose model is taken after the swap answers
    # with the new version, so an old answer comes from a request sent before the swap. When the first new
    # answer is recorded, its client has nothing else in flight and every other client at most one request: at
    # most clients - 1 old answers can follow it.
    first_new = versions.index(str(new.version))
    late_old = versions[first_new:].count(str(old.version))
    assert late_old <= load.clients - 1, (
        f"{late_old} answers of the old version after the first new one, {load.clients} clients"
    )
    assert count_rows(log_url)[0] == predicted + load.rows


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
    assert server.process is not None and server.process.returncode in GRACEFUL_EXIT
    assert count_rows(log_url)[0] == 50

    with ApiServer(env, tmp_path / "server2.log") as server:
        server.wait_ready()
        response = httpx.post(
            f"{server.url}/feedback",
            json={"request_id": request_ids[7], "actual": 1.9},
            headers=FEEDBACK_HEADERS,
        )
        assert response.status_code == 201
    engine = make_engine(log_url)
    with engine.connect() as connection:
        frame = pd.read_sql(
            text('select p."MedInc", f.actual from predictions p join feedback f using (request_id)'),
            connection,
        )
    engine.dispose()
    assert frame.to_dict(orient="records") == [{"MedInc": pytest.approx(1.7), "actual": 1.9}]


@pytest.mark.parametrize(
    "backend_name", ["sqlite"], indirect=True
)  # the route and the reload do not depend on the store
def test_admin_reload_loads_a_moved_alias_at_once(mutable_run, tmp_path):
    """With the periodic check an hour away, only POST /admin/reload can pick the moved alias up: it does, at
    once."""
    env = server_env(
        mutable_run.env,
        HOUSING_PREDICTION_LOG_URL=mutable_run.backend.new_log_url("reload"),
        HOUSING_RELOAD_INTERVAL="3600",
        HOUSING_ADMIN_TOKEN="test-admin-token-0123456789abcdefghij",
    )
    admin = {"Authorization": "Bearer test-admin-token-0123456789abcdefghij"}
    client = MlflowClient(mutable_run.tracking_uri)
    old = str(client.get_model_version_by_alias("CaliforniaHousing", "production").version)
    new = next(
        str(v.version)
        for v in sorted(
            client.search_model_versions("name = 'CaliforniaHousing'"), key=lambda v: int(v.version)
        )
        if str(v.version) != old and v.tags.get("candidate") == "linear_regression"
    )  # one the pipeline run registered
    with ApiServer(env, tmp_path / "server.log") as server:
        server.wait_ready()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                assert http.get("/model").json()["version"] == old
                client.set_registered_model_alias("CaliforniaHousing", "production", new)
                assert (
                    http.post("/predict", json=EXAMPLE_REQUEST).json()["model_version"] == old
                )  # not checked yet
                reloaded = http.post("/admin/reload", headers=admin).json()
                assert reloaded == {
                    "changed": True,
                    "previous_version": old,
                    "version": new,
                    "registry_error": None,
                }
                assert http.post("/predict", json=EXAMPLE_REQUEST).json()["model_version"] == new
                assert (
                    http.post("/admin/reload", headers=admin).json()["changed"] is False
                )  # nothing moved since
        finally:
            client.set_registered_model_alias(
                "CaliforniaHousing", "production", old
            )  # leave the registry as found
