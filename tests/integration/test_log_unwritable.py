"""/predict answers 503 when a row could be neither written to the database nor spilled to disk."""

from __future__ import annotations

import shutil

import httpx
import pytest

from housing.schema import EXAMPLE_REQUEST
from tests.server import ApiServer, server_env

SQLITE = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""The promise does not depend on the tracking backend: the SQLite pipeline run only."""


@SQLITE
def test_predict_is_a_503_when_a_row_could_be_neither_written_nor_spilled(pipeline_run, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(pipeline_run.artifacts_dir, artifacts)
    (artifacts / "prediction_log_spill").write_text(
        "a file where the spill folder should be"
    )  # root can write anywhere else
    env = server_env(
        pipeline_run.env,
        HOUSING_ARTIFACTS_DIR=str(artifacts),
        HOUSING_LOG_BUFFER_MAX_ROWS="1000",  # the least allowed
        HOUSING_PREDICTION_LOG_URL=f"sqlite:///{tmp_path / 'no-such-folder' / 'log.db'}",
    )  # the database fails
    with (
        ApiServer(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        server.wait_ready()
        answered = [http.post("/predict", json=[EXAMPLE_REQUEST] * 500) for _ in range(2)]
        assert [response.status_code for response in answered] == [
            200,
            200,
        ]  # 1,000 rows: within the memory cap
        refused = http.post("/predict", json=EXAMPLE_REQUEST)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert "spill file cannot be written" in refused.json()["detail"], refused.json()
        batch = http.post("/predict", json=[EXAMPLE_REQUEST] * 30)
        assert batch.status_code == 503 and "spill file cannot be written" in batch.json()["detail"]
        assert http.get("/health").status_code == 200
    assert "Traceback" not in (tmp_path / "server.log").read_text()
