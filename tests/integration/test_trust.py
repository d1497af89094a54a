"""Attacks on the loop, each tried against a real server and a real store, each failing with the service
unharmed: one labeller token cannot reprice production, invented or absurd labels are refused, a labeller who
reads the challenger's answers through the canary cannot decide its fate alone, one client's flood neither
hides a shift nor raises an alert, a monitor killed mid-retrain does not block a rollback, and a full disk
stops predictions before it stops the log."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from housing.config.settings import Settings
from housing.registry.production import move_production
from housing.store.locks import RETRAIN_LOCK, held_lock
from tests.conftest import PROJECT_DIR, PipelineRun, run_in_process
from tests.helpers import held_out_rows, wait_for
from tests.server import FEEDBACK_HEADERS, ApiServer, server_env, start_loop_server

MODEL = "CaliforniaHousing"
SQLITE = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""Tests whose path does not depend on the store: the SQLite pipeline run only."""


def monitor(env: dict[str, str], *args: str) -> str:
    result = run_in_process("monitor.py", *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def production(env: dict[str, str]) -> str:
    return str(
        MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(MODEL, "production").version
    )


def add_labeller(env: dict[str, str], name: str) -> str:
    """Register ``name`` with the labellers command, as a team would; its token."""
    result = subprocess.run(
        [sys.executable, "-m", "housing.store.labellers", "add", name],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def loop(mutable_run: PipelineRun, tmp_path: Path) -> Iterator[tuple[dict[str, str], ApiServer]]:
    env, server = start_loop_server(mutable_run, tmp_path, "trust", '["lightgbm_spatial"]')
    yield env, server
    server.stop()


def test_one_labeller_cannot_reprice_production_and_the_decision_says_why(loop, mutable_run):
    """The review's attack: 2,000 real districts nudged by 1 % (none a known row), 300 labelled at 1.5x the
    served value (at most 5.0) with the one labeller token. The RMSE reason and the evidence are there; the
    price step is not a retrain's to apply alone: an ALERT naming the step, production unmoved. Once named
    labellers are registered, one labeller's labels are no evidence on their own."""
    env, server = loop
    before = production(env)
    nudged = held_out_rows(mutable_run, 2_000).assign(AveRooms=lambda frame: frame["AveRooms"] * 1.01)
    with httpx.Client(base_url=server.url, timeout=120) as http:
        served = http.post("/predict", json=nudged.to_dict(orient="records")).json()["predictions"]
        server.wait_logged()
        for row in served[:300]:
            label = {"request_id": row["request_id"], "actual": min(5.0, 1.5 * row["MedHouseVal"])}
            assert http.post("/feedback", json=label, headers=FEEDBACK_HEADERS).status_code == 201
    out = monitor(env)
    assert "decision: ALERT, NO RETRAIN" in out and "retrained: training run" not in out, out
    assert "a larger move than the x1.350 a retrain applies on its own" in out, out
    assert "--approve-price-step 1.4" in out, out
    assert production(env) == before
    approved = run_in_process("monitor.py", "--approve-price-step", "1.5", env=env)
    assert approved.returncode == 0 and f"production version {before}" in approved.stdout
    assert "decision: RETRAIN" in monitor(env, "--dry-run")  # a person's approval lifts the bound
    add_labeller(env, "alice")  # a team: now no labeller makes up more than half of the evidence alone
    team = monitor(env, "--dry-run")
    assert "decision: ALERT, NO RETRAIN" in team and "300 new labelled districts left out" in team, team
    assert production(env) == before


@SQLITE
def test_labels_no_district_could_have_and_floods_of_labels_are_refused(loop, mutable_run):
    """60 invented districts at one place labelled 100 (the data ends at 5): each a 422 naming the plausible
    range; a labeller past its rate gets a 429 with Retry-After; every label carries its labeller."""
    env, server = loop
    invented = held_out_rows(mutable_run, 1).to_dict(orient="records")[0]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        ids = [row["request_id"] for row in http.post("/predict", json=[invented] * 60).json()["predictions"]]
        server.wait_logged()
        answers = [
            http.post("/feedback", json={"request_id": rid, "actual": 100.0}, headers=FEEDBACK_HEADERS)
            for rid in ids
        ]
    assert {answer.status_code for answer in answers} == {422}
    assert "plausibly be worth" in answers[0].json()["detail"] and "7.500" in answers[0].json()["detail"]


@SQLITE
def test_a_labeller_past_its_rate_is_told_to_wait(mutable_run, tmp_path):
    env, server = start_loop_server(
        mutable_run,
        tmp_path,
        "rate",
        '["lightgbm_spatial"]',
        HOUSING_FEEDBACK_LABEL_BURST="20",
        HOUSING_FEEDBACK_LABELS_PER_SECOND="0.01",
    )
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            served = http.post("/predict", json=held_out_rows(mutable_run, 25).to_dict(orient="records"))
            ids = [row["request_id"] for row in served.json()["predictions"]]
            server.wait_logged()
            statuses = [
                http.post("/feedback", json={"request_id": rid, "actual": 2.0}, headers=FEEDBACK_HEADERS)
                for rid in ids
            ]
        assert [answer.status_code for answer in statuses] == [201] * 20 + [429] * 5
        assert int(statuses[-1].headers["Retry-After"]) >= 1 and "default" in statuses[-1].json()["detail"]
    finally:
        server.stop()


def other_version(env: dict[str, str], production_version: str) -> str:
    """A registered version of another candidate than production's (a challenger)."""
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions(f"name = '{MODEL}'")
    chosen = next(v for v in versions if str(v.version) == production_version).tags["candidate"]
    return next(
        str(v.version) for v in versions if v.tags.get("candidate") not in (chosen, None, "linear_regression")
    )


@SQLITE
def test_a_canary_reader_cannot_have_the_challenger_promoted_or_dropped_alone(mutable_run, tmp_path):
    """Mallory, one of two named labellers, picks routing keys that land on the challenger, reads its exact
    answers and labels 150 districts with them (a perfect challenger), then 150 others with the champion's
    (a perfect champion). The live verdict counts labels from two labellers or more: it waits."""
    env, server = start_loop_server(
        mutable_run, tmp_path, "canary", '["lightgbm_spatial"]', HOUSING_CANARY_PERCENT="50"
    )
    try:
        champion = production(env)
        challenger = other_version(env, champion)
        MlflowClient(env["MLFLOW_TRACKING_URI"]).set_registered_model_alias(MODEL, "staging", challenger)
        add_labeller(env, "alice")
        mallory = bearer(add_labeller(env, "mallory"))
        rows = held_out_rows(mutable_run, 600).to_dict(orient="records")
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert wait_for(
                lambda: (http.get("/model").json()["challenger"] or {}).get("version") == challenger
            )
            picked: dict[str, list[dict[str, Any]]] = {champion: [], challenger: []}
            for index, row in enumerate(rows):
                answer = http.post("/predict", json=row, headers={"X-Routing-Key": f"key-{index}"}).json()
                if len(picked[answer["model_version"]]) < 150:
                    picked[answer["model_version"]].append(answer)
            server.wait_logged()
            probe = {"request_id": picked[champion][-1]["request_id"], "actual": 9.9}  # 422 once she is known
            assert wait_for(lambda: http.post("/feedback", json=probe, headers=mallory).status_code == 422)
            for answer in picked[challenger]:  # labelled with the challenger's exact answer
                label = {"request_id": answer["request_id"], "actual": answer["MedHouseVal"]}
                assert http.post("/feedback", json=label, headers=mallory).status_code == 201
        first = monitor(env)
        assert "the live verdict counts labels from two labellers or more" in first, first
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for answer in picked[champion]:  # then the champion's, to have the challenger dropped
                label = {"request_id": answer["request_id"], "actual": answer["MedHouseVal"]}
                assert http.post("/feedback", json=label, headers=mallory).status_code == 201
        second = monitor(env)
        assert "the live verdict counts labels from two labellers or more" in second, second
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        assert production(env) == champion
        assert str(client.get_model_version_by_alias(MODEL, "staging").version) == challenger
    finally:
        server.stop()


def test_one_clients_flood_of_training_rows_neither_hides_a_shift_nor_raises_an_alert(mutable_run, tmp_path):
    """Clients with tokens: a real client's high-income traffic is a shift; Mallory then sends 2,000 rows of
    the public training split in one batch. The window keeps the real client's rows (Mallory's make up no
    more than half of it): the shift is still found. Next to baseline traffic the same flood raises
    nothing."""
    tokens = {name: f"{name}-client-token-0123456789abcdefgh" for name in ("real", "mallory")}
    training = pd.read_pickle(mutable_run.artifacts_dir / "split" / "X_train.pkl").iloc[:2_000]
    training = training.to_dict(orient="records")
    token_file = tmp_path / "real.token"
    token_file.write_text(tokens["real"])
    decisions = {}
    for scenario in ("subpopulation", "baseline"):
        env, server = start_loop_server(
            mutable_run,
            tmp_path / scenario,
            f"flood-{scenario}",
            '["lightgbm_spatial"]',
            HOUSING_PREDICT_TOKENS=",".join(f"{name}={token}" for name, token in tokens.items()),
        )
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                assert http.post("/predict", json=training[0]).status_code == 401  # no token, no prediction
            simulated = run_in_process(
                "simulate_traffic.py",
                "--url",
                server.url,
                "--scenario",
                scenario,
                *(["--subpopulation", "high-income"] if scenario == "subpopulation" else []),
                "--requests",
                "1000",
                "--label-fraction",
                "0",
                "--quiet",
                "--client-token-file",
                str(token_file),
                env=env,
            )
            assert simulated.returncode == 0, simulated.stdout + simulated.stderr
            with httpx.Client(base_url=server.url, timeout=120) as http:
                flood = http.post("/predict", json=training, headers=bearer(tokens["mallory"]))
                assert flood.status_code == 200
            server.wait_logged()
            decisions[scenario] = monitor(env, "--dry-run")
        finally:
            server.stop()
    shifted, calm = decisions["subpopulation"], decisions["baseline"]
    assert "window: 2,000 predictions" in shifted and "of the features drifted" in shifted, shifted
    assert "decision: NO RETRAIN" in calm and "drifted features: 0%" in calm, calm


@SQLITE
def test_a_monitor_killed_mid_retrain_leaves_the_lock_to_a_rollback_at_once(loop, mutable_run):
    env, server = loop
    current = production(env)
    other = other_version(env, current)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    settings = Settings(
        tracking_uri=env["MLFLOW_TRACKING_URI"],
        artifacts_dir=Path(env["HOUSING_ARTIFACTS_DIR"]),
        prediction_log_url=env["HOUSING_PREDICTION_LOG_URL"],
    )
    with held_lock(settings.log_database_url, RETRAIN_LOCK, lease_seconds=60):
        for expected, to_version in ((current, other), (other, current)):  # a history to roll back along
            move_production(
                client,
                settings,
                expected=expected,
                to_version=to_version,
                command="test",
                reason="a history to roll back along",
                evidence={},
            )
    simulated = run_in_process(
        "simulate_traffic.py",
        "--url",
        server.url,
        "--scenario",
        "market-inflation",
        "--requests",
        "1500",
        "--quiet",
        env=env,
    )
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    server.wait_logged()
    retraining = Path(env["HOUSING_ARTIFACTS_DIR"]) / "retraining"
    watcher = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "monitor.py")],
        env=env,
        cwd=PROJECT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: retraining.exists() and any(retraining.iterdir()), timeout=300), "no retrain"
    finally:
        watcher.send_signal(signal.SIGKILL)
        watcher.wait()
    rolled = run_in_process("promote.py", "--rollback", env=env)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert f"rolled back from version {current} to version {other}" in rolled.stdout
    assert production(env) == other


@SQLITE
def test_below_the_free_space_floor_predict_is_a_503_with_the_reason_and_serving_resumes(
    mutable_run, tmp_path
):
    """The artifacts (spill folder and SQLite log) on a 64 MB file system with a 32 MB floor: filled past it,
    /predict answers 503 and says why; freed, it answers again. The log file is the owner's alone."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small file system: run it as root (CI does)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=True)
    try:
        env = server_env(
            mutable_run.env,
            HOUSING_ARTIFACTS_DIR=str(disk / "artifacts"),
            HOUSING_PREDICTION_LOG_URL=f"sqlite:///{disk / 'artifacts' / 'prediction_log.db'}",
            HOUSING_LOG_MIN_FREE_MB="32",
        )
        row = held_out_rows(mutable_run, 1).to_dict(orient="records")[0]
        with ApiServer(env, tmp_path / "server.log") as server, httpx.Client(base_url=server.url) as http:
            server.wait_ready()
            assert http.post("/predict", json=row).status_code == 200
            log_file = disk / "artifacts" / "prediction_log.db"
            assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
            ballast = disk / "ballast"
            ballast.write_bytes(b"\0" * 40 * 1024 * 1024)
            refused = wait_for(
                lambda: (answer := http.post("/predict", json=row)).status_code == 503 and answer
            )
            assert refused and "below the floor of 32 MB" in refused.json()["detail"], refused
            assert str(disk) not in refused.text and "Retry-After" in refused.headers
            ballast.unlink()
            assert wait_for(lambda: http.post("/predict", json=row).status_code == 200)
            for path in ("/ready", "/model"):
                assert str(tmp_path) not in http.get(path).text  # no server path to an anonymous client
    finally:
        subprocess.run(["umount", str(disk)], check=False)
