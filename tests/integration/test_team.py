"""The team setup: several API workers on one log, outages of the tracking server and the log database, and
its authentication (the tracking server's basic auth, PostgreSQL's passwords)."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

from housing.schema import EXAMPLE_REQUEST
from housing.store.log_reads import count_rows
from tests.conftest import run_in_process
from tests.helpers import wait_for
from tests.postgres import start_tracking_server
from tests.server import FEEDBACK_HEADERS, ApiServer, LoadGenerator, free_port, server_env


def served_versions(url: str) -> dict[str, str]:
    """pid -> production version, from the multiprocess Prometheus metrics (one housing_model_info series at 1
    per worker and alias; a version no longer loaded stays at 0: the client library cannot remove it across
    processes).
    """
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return dict(
        re.findall(
            r'housing_model_info\{alias="production",[^}]*pid="(\d+)"[^}]*version="(\d+)"\} 1\.0', metrics
        )
    )


@pytest.mark.parametrize(
    "backend_name", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)  # the team setup; two SQLite
# workers: test_workers' kill -9 test (counts, Prometheus totals) and make serve's default
def test_two_workers_switch_together_with_a_complete_log(mutable_run, tmp_path):
    log_url = mutable_run.backend.new_log_url("workers")
    env = server_env(
        mutable_run.env,
        HOUSING_PREDICTION_LOG_URL=log_url,
        HOUSING_RELOAD_INTERVAL="1",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus" / "api"),  # the workers create the folder
        HOUSING_MONITOR_MIN_WINDOW="100",
    )
    client = MlflowClient(mutable_run.tracking_uri)
    old = client.get_model_version_by_alias("CaliforniaHousing", "production")
    client.set_registered_model_alias(
        "CaliforniaHousing", "staging", old.version
    )  # no challenger, whatever earlier tests left
    new = next(
        v for v in client.search_model_versions("name = 'CaliforniaHousing'") if v.version != old.version
    )
    server = ApiServer(env, tmp_path / "server.log", extra_args=("--workers", "2")).start()
    try:
        server.wait_ready()
        wait_for(lambda: len(served_versions(server.url)) == 2)
        assert set(served_versions(server.url).values()) == {str(old.version)}

        with LoadGenerator(server.url, EXAMPLE_REQUEST, [EXAMPLE_REQUEST] * 4) as load:
            wait_for(lambda: len(load.results) >= 50)  # under load
            monitored = run_in_process(
                "monitor.py", "--dry-run", "--window", "500", env=env
            )  # reads while the API writes
            client.set_registered_model_alias("CaliforniaHousing", "production", new.version)
            # both workers (one between dropping its old series and setting the new shows none)
            switched = wait_for(
                lambda: (
                    (found := served_versions(server.url))
                    and len(found) == 2
                    and set(found.values()) == {str(new.version)}
                    and found
                )
            ) or served_versions(server.url)
            answered_when_switched = len(load.results)
            wait_for(lambda: len(load.results) >= answered_when_switched + 50)  # and under load after
        wait_for(lambda: count_rows(log_url)[0] >= load.rows)  # every served row flushed first
        # a worker killed without a shutdown: uvicorn starts another, and the dead one's live gauges disappear
        victim = next(iter(switched))
        os.kill(int(victim), signal.SIGKILL)
        wait_for(lambda: victim not in (found := served_versions(server.url)) and len(found) == 2)
        after_kill = served_versions(server.url)
    finally:
        server.stop()
        client.set_registered_model_alias("CaliforniaHousing", "production", old.version)

    assert len(switched) == 2 and set(switched.values()) == {str(new.version)}, switched
    assert (
        victim not in after_kill and len(after_kill) == 2 and set(after_kill.values()) == {str(new.version)}
    ), after_kill
    assert monitored.returncode == 0, monitored.stdout + monitored.stderr
    assert "locked" not in monitored.stdout + monitored.stderr
    assert load.results and not load.failures, load.failures[:5]  # client errors and non-200s alike
    assert set(load.versions) == {str(old.version), str(new.version)}
    # Each worker swaps its model before its gauge names the new version, so once both gauges did, a request
    # answers with the old version only if it was sent before: at most one per client was in flight when they
    # were read.
    late_old = load.versions[answered_when_switched:].count(str(old.version))
    assert late_old <= load.clients, (
        f"{late_old} answers of the old version after both workers switched, {load.clients} clients"
    )
    assert count_rows(log_url)[0] == load.rows


@pytest.mark.parametrize(
    "backend_name", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_outages_keep_the_api_serving_and_it_recovers(mutable_run, postgres, tmp_path):
    """Tracking server killed, then the log database refusing connections: the API keeps answering with the
    model it has, says so in /ready and /metrics, stages fail with one sentence, and all recovers."""
    backend = mutable_run.backend
    assert backend.tracking_db_url is not None
    port = free_port()

    def tracking_server() -> subprocess.Popen[bytes]:
        """A second tracking server on the same stores, on ``port``: the one the API uses here."""
        return start_tracking_server(
            backend.tracking_db_url or "",
            f"sqlite:///{backend.work_dir / 'mlflow-auth.db'}",
            backend.work_dir / "mlartifacts",
            port,
            tmp_path / "mlflow.log",
            postgres.passwords,
        ).process

    tracking = tracking_server()
    log_url = backend.new_log_url("outage")
    log_database = log_url.rsplit("/", 1)[1]
    env = server_env(
        mutable_run.env,
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
        HOUSING_PREDICTION_LOG_URL=log_url,
        HOUSING_RELOAD_INTERVAL="0.5",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",  # a look at the stopped server fails at once
    )
    admin = create_engine(backend.admin_url, isolation_level="AUTOCOMMIT")
    sent = 0
    with (
        ApiServer(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        version = server.wait_ready()["model"]["version"]
        # 1. the tracking server goes away
        tracking.terminate()
        tracking.wait(30)
        wait_for(lambda: http.get("/ready").json()["registry"]["reachable"] is False)
        ready = http.get("/ready")
        assert ready.status_code == 200 and ready.json()["registry"]["reachable"] is False
        assert ready.json()["registry"]["last_error"]
        assert "housing_registry_up 0.0" in http.get("/metrics").text
        for _ in range(5):
            response = http.post("/predict", json=EXAMPLE_REQUEST)
            assert response.status_code == 200 and response.json()["model_version"] == version
            sent += 1
        promote = run_in_process("promote.py", env=env)
        assert promote.returncode == 2, promote.stdout + promote.stderr
        errors = [line for line in promote.stderr.splitlines() if line.strip()]
        assert errors[-1].startswith(
            f"error: could not reach the MLflow tracking store at http://127.0.0.1:{port}"
        ), promote.stderr
        assert "Traceback" not in promote.stderr
        # ... and comes back on the same address
        tracking = tracking_server()
        wait_for(lambda: http.get("/ready").json()["registry"]["reachable"] is True)
        assert http.get("/ready").json()["registry"]["reachable"] is True
        assert "housing_registry_up 1.0" in http.get("/metrics").text

        # 2. the log database refuses connections
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{log_database}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                {"name": log_database},
            )
        for _ in range(20):
            assert http.post("/predict", json=EXAMPLE_REQUEST).status_code == 200
            sent += 1
        wait_for(lambda: http.get("/ready").json()["prediction_log"]["last_error"] is not None)
        log_status = http.get("/ready").json()["prediction_log"]
        assert log_status["last_error"] and log_status["pending_rows"] > 0
        assert (
            http.post(
                "/feedback", json={"request_id": "0" * 32, "actual": 2.0}, headers=FEEDBACK_HEADERS
            ).status_code
            == 503
        )
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{log_database}" ALLOW_CONNECTIONS true'))
        wait_for(lambda: http.get("/ready").json()["prediction_log"]["pending_rows"] == 0)
        assert http.get("/ready").json()["prediction_log"]["pending_rows"] == 0
    tracking.terminate()
    admin.dispose()
    assert count_rows(log_url)[0] == sent


@pytest.mark.parametrize(
    "backend_name", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_only_the_credentials_move_the_production_alias_and_open_the_databases(mutable_run, monkeypatch):
    """The tracking server refuses a client without credentials or with a wrong password (401) and lets the
    one with the stages' credentials set the alias; PostgreSQL refuses a connection without the password."""
    backend = mutable_run.backend
    credentials = backend.credentials_env()
    assert set(credentials) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    for key, value in credentials.items():
        assert mutable_run.env[key] == value, f"the stages get {key}"
        monkeypatch.setenv(key, value)
    production = MlflowClient(backend.tracking_uri).get_model_version_by_alias(
        "CaliforniaHousing", "production"
    )

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient(backend.tracking_uri).set_registered_model_alias(
            "CaliforniaHousing", "production", production.version
        )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password-0123456789")
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient(backend.tracking_uri).set_registered_model_alias(
            "CaliforniaHousing", "production", production.version
        )
    assert (
        httpx.get(
            f"{backend.tracking_uri}/api/2.0/mlflow/registered-models/get",
            params={"name": "CaliforniaHousing"},
        ).status_code
        == 401
    )

    for key, value in backend.credentials_env("reader").items():  # the API's account reads, never writes
        monkeypatch.setenv(key, value)
    reader = MlflowClient(backend.tracking_uri)
    assert reader.get_model_version_by_alias("CaliforniaHousing", "production").version == production.version
    with pytest.raises(MlflowException, match="403|Permission|permission"):
        reader.set_registered_model_alias("CaliforniaHousing", "production", production.version)

    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(backend.tracking_uri)
    client.set_registered_model_alias("CaliforniaHousing", "production", production.version)
    assert client.get_model_version_by_alias("CaliforniaHousing", "production").version == production.version

    assert backend.admin_url is not None
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/dev/null")
    admin = make_url(backend.admin_url)
    for password in (None, "not-the-password"):
        engine = create_engine(
            URL.create(admin.drivername, admin.username, password, admin.host, admin.port, admin.database)
        )
        with pytest.raises(OperationalError, match="password"), engine.connect():
            pass
        engine.dispose()
    engine = create_engine(backend.admin_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()
