"""Secrets stay secret: passwords in the tracking URI and the prediction-log URL, and a token in the data
source, never appear in a response, a log line, the data manifest, a stage's output or the tracking store."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from mlflow import MlflowClient

from housing.schema import EXAMPLE_REQUEST
from tests.conftest import run_in_process, stage_env
from tests.helpers import DataServer, wait_for
from tests.server import FEEDBACK_HEADERS, ApiServer, free_port, server_env

TRACKING_PASSWORD = "S3cretPw"
LOG_PASSWORD = "Pw2LogDb"
SOURCE_TOKEN = "S3cretTok"
SOURCE_PASSWORD = "LoaderPw9"


def leaked(text: str | bytes, *secrets: str) -> list[str]:
    """The secrets found in ``text``."""
    if isinstance(text, bytes):
        return [secret for secret in secrets if secret.encode() in text]
    return [secret for secret in secrets if secret in text]


def test_the_api_shows_no_password_of_its_registry_or_its_log(tmp_path):
    """Unreachable tracking server and log database, both with a password in their URL: the API keeps serving
    /health, answers /ready 503 with the URIs masked, and no response or log line holds either password."""
    tracking_uri = f"http://admin:{TRACKING_PASSWORD}@127.0.0.1:{free_port()}"
    log_url = f"postgresql+psycopg://u:{LOG_PASSWORD}@127.0.0.1:{free_port()}/x"
    env = server_env(
        stage_env(tmp_path),
        MLFLOW_TRACKING_URI=tracking_uri,
        HOUSING_PREDICTION_LOG_URL=log_url,
        HOUSING_RELOAD_INTERVAL="0.5",
        HOUSING_ADMIN_TOKEN="test-admin-token-0123456789abcdefghij",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",  # each look at the unreachable registry fails at once
    )
    responses: list[httpx.Response] = []
    admin = {"Authorization": "Bearer test-admin-token-0123456789abcdefghij"}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/health", {}),
        ("GET", "/ready", {}),
        ("GET", "/model", {}),
        ("GET", "/metrics", {}),
        ("GET", "/docs", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/nowhere", {}),
        ("POST", "/predict", {"json": EXAMPLE_REQUEST}),
        ("POST", "/predict", {"json": [EXAMPLE_REQUEST] * 2}),
        ("POST", "/feedback", {"json": {"request_id": "0" * 32, "actual": 2.0}, "headers": FEEDBACK_HEADERS}),
        ("POST", "/feedback", {"json": {"request_id": "0" * 32, "actual": 2.0}}),
        ("POST", "/admin/reload", {"headers": admin}),
    ]
    with (
        ApiServer(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        assert wait_for(lambda: http.get("/ready").json()["registry"]["failed_checks"] >= 3)
        for method, path, kwargs in requests:
            responses.append(http.request(method, path, **kwargs))
    by_path = {(r.request.method, r.request.url.path): r for r in responses}
    ready = by_path["GET", "/ready"]
    assert by_path["GET", "/health"].status_code == 200
    assert ready.status_code == 503 and ready.json()["registry"]["reachable"] is False
    assert ready.json()["registry"]["uri"] == tracking_uri.replace(TRACKING_PASSWORD, "***")
    assert "admin:***@" in ready.json()["reason"]
    assert "u:***@" in ready.json()["prediction_log"]["last_error"]
    assert by_path["POST", "/predict"].status_code == 503 and by_path["GET", "/model"].status_code == 503
    assert [r.status_code for r in responses if r.request.url.path == "/feedback"] == [
        503,
        401,
    ]  # log down; no token
    for response in responses:
        shown = response.text + "".join(f"{key}: {value}\n" for key, value in response.headers.items())
        assert not leaked(shown, TRACKING_PASSWORD, LOG_PASSWORD), (response.request.url.path, shown[:2000])
    server_log = (tmp_path / "server.log").read_text()
    assert "u:***@" in server_log and "registry check failed" in server_log  # the URIs were logged, masked
    assert not leaked(server_log, TRACKING_PASSWORD, LOG_PASSWORD), server_log[-5000:]


def test_a_data_source_token_reaches_no_manifest_output_or_tracking_tag(tmp_path):
    """load_data from a local server with basic-auth credentials and a token in the URL, then preprocess and
    train: the server got both, and nothing written or printed holds either (the whole work dir is searched).
    """
    work_dir = tmp_path / "work"
    env = stage_env(work_dir)
    outputs = []
    with DataServer() as server:
        host = server.url.removeprefix("http://")
        source = f"http://loader:{SOURCE_PASSWORD}@{host}/data.csv?token={SOURCE_TOKEN}&page=1"
        outputs.append(run_in_process("load_data.py", "--source", source, env=env))
        assert outputs[-1].returncode == 0, outputs[-1].stderr
    basic = "Basic " + base64.b64encode(f"loader:{SOURCE_PASSWORD}".encode()).decode()
    assert server.requests == [(f"/data.csv?token={SOURCE_TOKEN}&page=1", basic)]  # the credentials were used
    masked = f"http://loader:***@{host}/data.csv?token=***&page=1"
    manifest = json.loads((work_dir / "artifacts" / "data" / "manifest.json").read_text())
    assert manifest["source"] == masked and manifest["rows"] == 20640
    assert masked in outputs[-1].stdout

    for script, *args in (("preprocess.py",), ("train.py", "--candidates", "linear_regression")):
        outputs.append(run_in_process(script, *args, env=env, cwd=work_dir))
        assert outputs[-1].returncode == 0, outputs[-1].stdout + outputs[-1].stderr
    for output in outputs:
        assert not leaked(output.stdout + output.stderr, SOURCE_TOKEN, SOURCE_PASSWORD)

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(run.data.tags.get("data_source") == masked for run in runs)
    sources = [dataset.dataset.source for run in runs if run.inputs for dataset in run.inputs.dataset_inputs]
    assert sources and all(SOURCE_TOKEN not in s and "token=***" in s for s in sources)
    written = [path for path in work_dir.rglob("*") if path.is_file()]
    assert any(path.name == "mlflow.db" for path in written)
    assert not [str(path) for path in written if leaked(path.read_bytes(), SOURCE_TOKEN, SOURCE_PASSWORD)]


def test_the_stages_name_an_unreachable_tracking_store_without_its_password(tmp_path):
    env = stage_env(
        tmp_path,
        MLFLOW_TRACKING_URI=f"http://admin:{TRACKING_PASSWORD}@127.0.0.1:{free_port()}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
    )
    result = run_in_process("promote.py", "--rollback", env=env, cwd=tmp_path)  # connects to the store first
    assert result.returncode == 2, result.stdout + result.stderr
    assert "admin:***@" in result.stderr and not leaked(result.stdout + result.stderr, TRACKING_PASSWORD)
