"""The compose stack is the team setup, for real: from empty volumes the pipeline service registers and
promotes a model, the API container answers from it, the closed loop runs in containers (traffic and labels
from this machine, a monitor round retrains, every API worker follows), a stopped API container loses no
answered prediction, ``down`` and ``up`` keep the registry, the ledger and the log, the API's credentials can
neither move production nor read what is not the log, and no container runs as root.

The tests share one stack and run in order: each starts where the one before left it."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from housing.schema import EXAMPLE_REQUEST
from tests.conftest import DATA_SOURCE, run_in_process
from tests.deploy.conftest import Stack
from tests.helpers import wait_for
from tests.server import LoadGenerator

MODEL = "CaliforniaHousing"
pytestmark = pytest.mark.deploy


def client(stack: Stack, user: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.secret(f"tracking_{user}_password"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return MlflowClient(stack.tracking_url)


def database(stack: Stack, role: str, name: str = "predictions") -> str:
    password = stack.secret("api_db_password" if role == "housing_api" else "writer_db_password")
    return f"postgresql+psycopg://{role}:{password}@127.0.0.1:{stack.postgres_port}/{name}"


def served_versions(stack: Stack) -> dict[str, str]:
    """pid -> production version of every API worker (multiprocess Prometheus: one series per worker)."""
    metrics = httpx.get(f"{stack.api_url}/metrics", timeout=10).text
    return dict(
        re.findall(
            r'housing_model_info\{alias="production",[^}]*pid="(\d+)"[^}]*version="(\d+)"\} 1\.0', metrics
        )
    )


API_WORKERS = 2
"""The compose stack's API workers (HOUSING_API_WORKERS' default)."""


def api_ready(stack: Stack) -> dict | None:
    """/ready's answer once every API worker has loaded the production model (/ready answers from whichever
    worker took the connection; /metrics counts them all); None while they start or load."""
    try:
        answer = httpx.get(f"{stack.api_url}/ready", timeout=5)
        if answer.status_code != 200:
            return None
        versions = served_versions(stack)
    except httpx.HTTPError:
        return None
    ready = answer.json()
    if len(versions) < API_WORKERS or set(versions.values()) != {str(ready["model"]["version"])}:
        return None
    return ready


def log_rows(stack: Stack) -> int:
    engine = create_engine(database(stack, "housing_writer"))
    with engine.connect() as connection:
        count = connection.execute(text("select count(*) from predictions")).scalar_one()
    engine.dispose()
    return int(count)


def test_the_image_runs_every_role_as_a_user_without_compiler_tests_or_git(image):
    inside = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            image,
            "-c",
            "id -u; command -v gcc cc c++ || echo no-compiler; ls -a /app",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = inside.stdout.split()
    assert lines[0] == "10001" and "no-compiler" in lines, inside.stdout + inside.stderr
    assert {"train.py", "app.py", "housing"} <= set(lines) and not {"tests", ".git", "bench"} & set(lines)
    helped = subprocess.run(
        ["docker", "run", "--rm", image, "python", "train.py", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0 and "--candidates" in helped.stdout, helped.stderr


def test_the_pipeline_service_registers_and_promotes_a_model_the_api_then_serves(
    stack, data_dir, monkeypatch
):
    result = stack.run(
        "run",
        "--rm",
        "-v",
        f"{data_dir}:/data:ro",
        "-e",
        "HOUSING_DATA_SOURCE=/data/california_housing.csv",
        "-e",
        "HOUSING_ESTIMATOR_SCALE=0.3",
        "pipeline",
        timeout=1200,
    )
    assert "production" in result.stdout, result.stdout[-3000:]
    reader = client(stack, "reader", monkeypatch)
    production = str(reader.get_model_version_by_alias(MODEL, "production").version)
    ready = wait_for(lambda: api_ready(stack), timeout=120)
    assert ready, httpx.get(f"{stack.api_url}/ready", timeout=10).text
    assert ready["model"]["version"] == production
    assert httpx.post(f"{stack.api_url}/predict", json=EXAMPLE_REQUEST, timeout=30).status_code == 401
    answer = httpx.post(
        f"{stack.api_url}/predict", json=EXAMPLE_REQUEST, headers=client_headers(stack), timeout=30
    ).json()
    assert answer["model_version"] == production and 0 < answer["MedHouseVal"] < 10


def client_headers(stack: Stack) -> dict[str, str]:
    """The team client's bearer token: the stack requires one on POST /predict."""
    return {"Authorization": f"Bearer {stack.secret('client_token')}"}


def simulate(stack: Stack, scenario: str, seed: int) -> None:
    """The traffic simulator from this machine: real held-out districts to the API, their labels back with
    the labellers' token from the stack's secrets."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOUSING_DATA_SOURCE": str(DATA_SOURCE),
        "HOUSING_FEEDBACK_TOKEN": stack.secret("feedback_token"),
    }
    result = run_in_process(
        "simulate_traffic.py",
        "--url",
        stack.api_url,
        "--scenario",
        scenario,
        "--requests",
        "1000",
        "--seed",
        str(seed),
        "--quiet",
        "--client-token-file",
        str(stack.secrets_dir / "client_token"),
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_closed_loop_runs_in_containers_and_every_worker_follows(stack, monkeypatch):
    reader = client(stack, "reader", monkeypatch)
    before = str(reader.get_model_version_by_alias(MODEL, "production").version)
    assert wait_for(lambda: len(served_versions(stack)) == 2, timeout=60), served_versions(stack)
    simulate(stack, "market-inflation", seed=2)
    monitored = stack.run(
        "run",
        "--rm",
        "-e",
        'HOUSING_CANDIDATES=["lightgbm_spatial"]',
        "-e",
        "HOUSING_ESTIMATOR_SCALE=0.3",
        "monitor",
        "python",
        "monitor.py",
        "--window",
        "1000",
        timeout=1200,
    )
    assert "decision: RETRAIN" in monitored.stdout and "production moved to version" in monitored.stdout, (
        monitored.stdout[-4000:]
    )
    after = str(reader.get_model_version_by_alias(MODEL, "production").version)
    assert after != before
    figures = httpx.get(f"{stack.api_url}/metrics", timeout=10).text  # the monitor's round, read by the API
    assert re.search(r"^housing_monitor_realized_rmse\{[^}]*\} \d", figures, re.MULTILINE), figures[-2000:]
    followed = wait_for(
        lambda: set((found := served_versions(stack)).values()) == {after} and len(found) == 2, timeout=120
    )
    assert followed, served_versions(stack)


def test_a_stopped_api_container_loses_no_answered_prediction(stack):
    rows_before = log_rows(stack)
    with LoadGenerator(
        stack.api_url, EXAMPLE_REQUEST, [EXAMPLE_REQUEST] * 5, headers=client_headers(stack)
    ) as load:
        wait_for(lambda: len(load.results) >= 200)
        stack.run("stop", "api", timeout=120)  # SIGTERM under load: uvicorn drains, the log writes
    answered = load.rows
    stack.run("start", "api", timeout=120)
    assert wait_for(lambda: api_ready(stack), timeout=120)
    assert log_rows(stack) == rows_before + answered  # every 200 the clients got is in the log, once


def answered_rows(http: httpx.Client, requests: int) -> int:
    """Rows answered 200 over ``requests`` batches of 10: only those are promised to the log. Most requests
    must be answered, or the test would judge nothing."""
    statuses, rows = [], 0
    for _ in range(requests):
        response = http.post("/predict", json=[EXAMPLE_REQUEST] * 10)
        statuses.append(response.status_code)
        if response.status_code == 200:
            rows += len(response.json()["predictions"])
    assert statuses.count(200) >= requests // 2, f"statuses: {sorted(set(statuses))}"
    return rows


def test_a_killed_api_container_loses_at_most_the_rows_of_its_last_flush(stack):
    """SIGKILL, as a crashed host would: every row answered before the last flush is in the log; of the
    burst answered just before the kill, at most those still in memory are lost (the spill volume keeps the
    rest)."""
    rows_before = log_rows(stack)
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=client_headers(stack)) as http:
        settled = answered_rows(http, 100)
        assert wait_for(lambda: log_rows(stack) == rows_before + settled, timeout=60)
        burst = answered_rows(http, 20)
    stack.run("kill", "api", timeout=120)
    stack.run("start", "api", timeout=120)
    assert wait_for(lambda: api_ready(stack), timeout=120)
    assert rows_before + settled <= log_rows(stack) <= rows_before + settled + burst


def test_down_and_up_keep_the_registry_the_ledger_and_the_log(stack, monkeypatch):
    reader = client(stack, "reader", monkeypatch)
    versions = len(reader.search_model_versions(f"name = '{MODEL}'"))
    production = str(reader.get_model_version_by_alias(MODEL, "production").version)
    engine = create_engine(database(stack, "housing_writer"))
    with engine.connect() as connection:
        ledger = connection.execute(text("select count(*) from production_ledger")).scalar_one()
    engine.dispose()
    rows = log_rows(stack)
    stack.run("down", timeout=300)
    stack.up()
    assert len(reader.search_model_versions(f"name = '{MODEL}'")) == versions
    assert str(reader.get_model_version_by_alias(MODEL, "production").version) == production
    engine = create_engine(database(stack, "housing_writer"))
    with engine.connect() as connection:
        assert connection.execute(text("select count(*) from production_ledger")).scalar_one() == ledger >= 2
    engine.dispose()
    assert log_rows(stack) == rows
    ready = wait_for(lambda: api_ready(stack), timeout=120)
    assert ready and ready["model"]["version"] == production


def test_the_apis_credentials_cannot_move_production_nor_read_what_is_not_the_log(stack, monkeypatch):
    reader = client(stack, "reader", monkeypatch)
    production = reader.get_model_version_by_alias(MODEL, "production")
    with pytest.raises(MlflowException, match="403|Permission|permission"):
        reader.set_registered_model_alias(MODEL, "production", "1")
    with pytest.raises(MlflowException, match="403|Permission|permission"):
        reader.delete_registered_model_alias(MODEL, "production")
    assert reader.get_model_version_by_alias(MODEL, "production").version == production.version
    api = create_engine(database(stack, "housing_api"))
    with api.connect() as connection:
        assert connection.execute(text("select count(*) from predictions")).scalar_one() > 0
        for table in ("production_ledger", "locks"):
            with pytest.raises(ProgrammingError, match="permission denied"):
                connection.execute(text(f"select * from {table}"))
            connection.rollback()
        with pytest.raises(ProgrammingError, match="permission denied"):
            connection.execute(text("create table planted (x int)"))
    api.dispose()
    for other in ("mlflow", "mlflow_auth"):
        engine = create_engine(database(stack, "housing_api", other))
        with pytest.raises(OperationalError, match="permission denied|not permitted"), engine.connect():
            pass
        engine.dispose()


def test_no_container_of_the_stack_runs_as_root(stack):
    for service in ("mlflow", "api", "monitor"):
        user = stack.run("exec", "-T", service, "id", "-u").stdout.strip()
        assert user == "10001", (service, user)
