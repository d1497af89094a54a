"""Labels steer retraining, so POST /feedback needs the labellers' bearer token: the attacker's view first,
then the labeller's, then the quick start (make serve + make simulate) sharing the generated token file."""

from __future__ import annotations

import logging
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from housing.api.main import create_app
from housing.config.settings import Settings
from housing.schema import EXAMPLE_REQUEST
from tests.conftest import DATA_SOURCE, PipelineRun, run_in_process
from tests.helpers import wait_for
from tests.server import FEEDBACK_HEADERS, FEEDBACK_TOKEN, ApiServer, server_env


def wait_ready(client: TestClient) -> None:
    assert wait_for(lambda: client.get("/ready").status_code == 200), client.get("/ready").json()


@pytest.fixture(scope="module")
def client(pipeline_run: PipelineRun) -> Iterator[TestClient]:
    """The API with a known feedback token, on a prediction log of its own."""
    settings = pipeline_run.settings(
        prediction_log_url=pipeline_run.backend.new_log_url("auth"), feedback_token=FEEDBACK_TOKEN
    )
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def logged_request_id(client: TestClient) -> str:
    response = client.post("/predict", json=EXAMPLE_REQUEST)
    assert response.status_code == 200
    return str(response.json()["request_id"])


# --- the attacker
# ---------------------------------------------------------------------------------------------
def test_no_credentials_is_401_with_a_bearer_challenge_and_stores_nothing(client):
    request_id = logged_request_id(client)
    response = client.post("/feedback", json={"request_id": request_id, "actual": 99.0})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["detail"]
    honest = client.post(
        "/feedback", json={"request_id": request_id, "actual": 2.0}, headers=FEEDBACK_HEADERS
    )
    assert (
        honest.status_code == 201 and honest.json()["status"] == "recorded"
    )  # the attacker's label was never stored


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer wrong-token", 403),
        (f"Bearer {FEEDBACK_TOKEN}x", 403),
        (f"Bearer {FEEDBACK_TOKEN[:-1]}", 403),
        ("Bearer ", 401),
        (f"Basic {FEEDBACK_TOKEN}", 401),
        (FEEDBACK_TOKEN, 401),
    ],
    ids=["wrong", "longer", "shorter", "empty", "basic-scheme", "no-scheme"],
)
def test_wrong_credentials_are_refused(client, authorization, status):
    request_id = logged_request_id(client)
    response = client.post(
        "/feedback", json={"request_id": request_id, "actual": 99.0}, headers={"Authorization": authorization}
    )
    assert response.status_code == status, response.text
    assert FEEDBACK_TOKEN not in response.text
    honest = client.post(
        "/feedback", json={"request_id": request_id, "actual": 2.0}, headers=FEEDBACK_HEADERS
    )
    assert honest.status_code == 201


def test_credentials_are_checked_before_the_body(client):
    response = client.post(
        "/feedback", json={"request_id": "x", "actual": -1.0}, headers={"Authorization": "Bearer wrong"}
    )
    assert response.status_code == 403  # an attacker learns nothing about the body's rules


# --- the labeller
# -----------------------------------------------------------------------------------------------
def test_the_right_token_records_the_label(client):
    request_id = logged_request_id(client)
    response = client.post(
        "/feedback",
        json={"request_id": request_id, "actual": 2.5},
        headers={"Authorization": f"bearer {FEEDBACK_TOKEN}"},
    )
    assert response.status_code == 201 and response.json() == {"request_id": request_id, "status": "recorded"}


@pytest.mark.parametrize("literal", ["0", "-1", "101", "100.0001", "NaN", "Infinity"])
def test_labels_outside_the_targets_range_are_422(client, literal):
    request_id = logged_request_id(client)
    body = f'{{"request_id": "{request_id}", "actual": {literal}}}'
    response = client.post(
        "/feedback", content=body, headers={**FEEDBACK_HEADERS, "Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "actual", response.text


def test_openapi_documents_the_bearer_token(client):
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/feedback"]["post"]
    assert {"401", "403", "422"} <= set(operation["responses"])
    (requirement,) = operation["security"]
    (scheme_name,) = requirement
    scheme = spec["components"]["securitySchemes"][scheme_name]
    assert (
        scheme["type"] == "http"
        and scheme["scheme"].lower() == "bearer"
        and "HOUSING_FEEDBACK_TOKEN" in scheme["description"]
    )


# --- the explicit, unsafe opt-out
# -------------------------------------------------------------------------------
def test_unsafe_open_feedback_takes_labels_from_anyone_and_says_so(pipeline_run, tmp_path, caplog):
    settings = Settings(
        artifacts_dir=tmp_path / "artifacts",
        tracking_uri=pipeline_run.tracking_uri,
        prediction_log_url=pipeline_run.backend.new_log_url("open"),
        feedback_token=None,
        unsafe_open_feedback=True,
    )
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as open_client:
        wait_ready(open_client)
        response = open_client.post(
            "/feedback", json={"request_id": logged_request_id(open_client), "actual": 2.0}
        )
    assert response.status_code == 201
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("open to anyone" in message for message in warnings), warnings


# --- the quick start: make serve generates the token, make simulate finds it
# --------------------------------------
def quick_start_env(pipeline_run: PipelineRun, artifacts_dir: Path) -> dict[str, str]:
    """What ``make serve`` and ``make simulate`` share: the settings, with no feedback token set by hand."""
    env = server_env(
        pipeline_run.env,
        HOUSING_ARTIFACTS_DIR=str(artifacts_dir),
        HOUSING_PREDICTION_LOG_URL=pipeline_run.backend.new_log_url("quickstart"),
    )
    del env["HOUSING_FEEDBACK_TOKEN"]
    return env


def test_serve_and_simulate_share_the_generated_token(pipeline_run, tmp_path):
    """Also: after the pipeline, the simulator reads the dataset load_data.py stored, with HOUSING_DATA_SOURCE
    unset and every download made to fail (a dead proxy, an empty scikit-learn data home): the quick start
    works offline.
    """
    env = quick_start_env(pipeline_run, tmp_path / "artifacts")
    shutil.copytree(pipeline_run.artifacts_dir / "data", tmp_path / "artifacts" / "data")
    offline = {key: value for key, value in env.items() if key != "HOUSING_DATA_SOURCE"}
    offline.update(
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        SCIKIT_LEARN_DATA=str(tmp_path / "no-sklearn-data"),
    )
    with ApiServer(env, tmp_path / "server.log") as server:
        server.wait_ready()
        token_path = tmp_path / "artifacts" / "secrets" / "feedback_token"
        assert (
            stat.S_IMODE(token_path.stat().st_mode) == 0o600
            and stat.S_IMODE(token_path.parent.stat().st_mode) == 0o700
        )
        result = run_in_process(
            "simulate_traffic.py", "--url", server.url, "--requests", "40", "--quiet", env=offline
        )
        # elsewhere (no token file, no stored dataset): the token from the file the flag names, the rows
        # from --source, another scenario
        elsewhere = {
            key: value
            for key, value in quick_start_env(pipeline_run, tmp_path / "elsewhere").items()
            if key != "HOUSING_DATA_SOURCE"
        }
        elsewhere.update(
            {key: offline[key] for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SCIKIT_LEARN_DATA")}
        )
        flagged = run_in_process(
            "simulate_traffic.py",
            "--url",
            server.url,
            "--requests",
            "40",
            "--quiet",
            "--scenario",
            "subpopulation",
            "--subpopulation",
            "inland-low-income",
            "--feedback-token-file",
            str(token_path),
            "--source",
            str(DATA_SOURCE),
            env=elsewhere,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"40 labels sent \(0 failed\)", result.stdout), result.stdout
    assert flagged.returncode == 0 and re.search(r"40 labels sent \(0 failed\)", flagged.stdout), (
        flagged.stdout + flagged.stderr
    )
    assert (
        token_path.read_text().strip()
        not in (tmp_path / "server.log").read_text() + result.stdout + result.stderr
    )


def test_simulate_without_a_token_says_how_to_get_one(pipeline_run, tmp_path):
    env = quick_start_env(pipeline_run, tmp_path / "nothing-here")
    result = run_in_process("simulate_traffic.py", "--url", "http://127.0.0.1:9", "--requests", "10", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "HOUSING_FEEDBACK_TOKEN" in result.stderr
        and "--feedback-token-file" in result.stderr
        and "Traceback" not in result.stderr
    )
    no_labels = run_in_process(
        "simulate_traffic.py",
        "--url",
        "http://127.0.0.1:9",
        "--requests",
        "10",
        "--label-fraction",
        "0",
        env=env,
    )
    assert (
        no_labels.returncode == 2 and "does not answer" in no_labels.stderr
    )  # no labels need no token: it gets as far as the API
