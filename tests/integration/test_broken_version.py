"""A broken version is remembered: the real server keeps serving the old version (no request fails and none is
answered by the broken one while it is tried under load), loads the broken one once,
says which and why in /ready, recovers when the alias moves, and keeps serving when the alias is removed.

The registry is a fresh SQLite store of the test's own (copies of the pipeline run's production model, one of
them with its skops file truncated), so no other test's registry is touched.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from housing.schema import EXAMPLE_REQUEST
from tests.conftest import stage_env
from tests.helpers import wait_for
from tests.server import GRACEFUL_EXIT, ApiServer, LoadGenerator, server_env

NAME, ALIAS = "CaliforniaHousing", "production"


@dataclass
class OwnRegistry:
    """A SQLite registry with versions 1 (good), 2 (truncated skops file) and 3 (good, a copy of 1)."""

    tracking_uri: str
    client: MlflowClient


@pytest.fixture
def own_registry(pipeline_run, tmp_path: Path) -> OwnRegistry:
    source = MlflowClient(pipeline_run.tracking_uri)
    production = source.get_model_version_by_alias(NAME, ALIAS)
    good = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=source.get_model_version_download_uri(NAME, production.version),
            dst_path=str(tmp_path / "downloaded"),
            tracking_uri=pipeline_run.tracking_uri,
        )
    )
    copy, broken = shutil.copytree(good, tmp_path / "copy"), shutil.copytree(good, tmp_path / "broken")
    model_file = (
        broken / yaml.safe_load((broken / "MLmodel").read_text())["flavors"]["sklearn"]["pickled_model"]
    )
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    tracking_uri = f"sqlite:///{tmp_path / 'registry.db'}"
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(NAME)
    for folder in (good, broken, copy):
        client.create_model_version(NAME, source=str(folder), tags={"candidate": folder.name})
    client.set_registered_model_alias(NAME, ALIAS, "1")
    return OwnRegistry(tracking_uri, client)


def ready_when(http: httpx.Client, condition: Callable[[dict], bool]) -> dict:
    """The /ready body once ``condition`` holds on it."""
    body = wait_for(lambda: (found := http.get("/ready").json()) and condition(found) and found)
    assert body, f"/ready never satisfied the condition: {http.get('/ready').json()}"
    return body


def predicted_version(http: httpx.Client) -> str:
    response = http.post("/predict", json=EXAMPLE_REQUEST)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_a_broken_version_is_loaded_once_and_the_old_one_keeps_serving(own_registry, tmp_path):
    client, log_path = own_registry.client, tmp_path / "server.log"
    env = server_env(
        stage_env(tmp_path), MLFLOW_TRACKING_URI=own_registry.tracking_uri, HOUSING_RELOAD_INTERVAL="0.5"
    )
    attempts = lambda: log_path.read_text().count(f"could not load {NAME} version 2")  # noqa: E731
    server = ApiServer(env, log_path).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert server.wait_ready()["model"]["version"] == "1"

            with LoadGenerator(
                server.url, EXAMPLE_REQUEST, [EXAMPLE_REQUEST] * 3, batch_every=(5, 7)
            ) as load:
                wait_for(lambda: len(load.results) >= 20)  # under load before the alias moves
                client.set_registered_model_alias(
                    NAME, ALIAS, "2"
                )  # the broken one, while clients keep asking
                ready = ready_when(
                    http, lambda body: (body["registry"]["failed_version"] or {}).get("version") == "2"
                )
                first_check, checks = ready["registry"]["last_check"], ready["registry"]["checks"]
                assert ready_when(http, lambda body: body["registry"]["checks"] >= checks + 6)  # 6 more looks
            assert load.results and not load.failures, load.failures[
                :5
            ]  # loading the broken one failed no request
            assert set(load.versions) == {"1"}  # and it never answered one
            response = http.get("/ready")
            assert response.status_code == 200 and response.json()["model"]["version"] == "1"
            registry = response.json()["registry"]
            assert registry["last_check"] > first_check  # the follower kept checking the alias
            assert registry["alias"] == {"name": ALIAS, "version": "2", "missing": False}
            assert registry["failed_version"]["reason"]
            assert f"could not load {NAME} version 2" in registry["last_error"]
            assert "still serving version 1" in registry["last_error"]
            assert predicted_version(http) == "1"
            assert attempts() == 1, log_path.read_text()

            client.set_registered_model_alias(NAME, ALIAS, "3")  # moved: recovers
            ready = ready_when(http, lambda body: (body["model"] or {}).get("version") == "3")
            assert ready["registry"]["failed_version"] is None and ready["registry"]["last_error"] is None
            assert predicted_version(http) == "3"

            client.set_registered_model_alias(
                NAME, ALIAS, "2"
            )  # moved back to the broken one: tried once more
            ready = ready_when(
                http, lambda body: (body["registry"]["failed_version"] or {}).get("version") == "2"
            )
            ready_when(http, lambda body: body["registry"]["checks"] >= ready["registry"]["checks"] + 3)
            assert attempts() == 2 and predicted_version(http) == "3"

            client.delete_registered_model_alias(NAME, ALIAS)  # removed: keeps serving, and says so
            ready = ready_when(http, lambda body: body["registry"]["alias"]["missing"])
            assert ready["status"] == "ready" and ready["model"]["version"] == "3"
            assert ready["registry"]["alias"] == {"name": ALIAS, "version": None, "missing": True}
            assert ready["registry"]["failed_version"] is None
            assert (
                f"no version of {NAME} has the alias '{ALIAS}'; still serving version 3"
                in ready["registry"]["last_error"]
            )
            assert http.get("/ready").status_code == 200 and predicted_version(http) == "3"
    finally:
        exit_code = server.stop()
    assert exit_code in GRACEFUL_EXIT
    assert (
        log_path.read_text().count(f"no version of {NAME} has the alias") == 1
    )  # said once, not every interval
