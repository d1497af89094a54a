"""One retrain at a time and a production ledger, end to end: ``promote.py`` under the retrain lock, its
``--history`` and ``--rollback`` as real processes on a real MLflow SQLite store; and the lease lock and the
ledger on PostgreSQL (``postgres`` marker), with real processes racing for the lock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from housing.config.settings import Settings
from housing.registry.ledger import LedgerEntry, previous_production, read_history, record_change
from housing.registry.production import move_production, move_staging, production_version
from housing.store.locks import (
    RETRAIN_LOCK,
    acquire_lock,
    describe_holder,
    held_lock,
    read_lock,
    release_lock,
)
from housing.store.tables import make_engine
from tests.backends import PostgresProvider
from tests.conftest import run_in_process, stage_env
from tests.helpers import expired_lease, race_for_locks, the_winner
from tests.postgres import create_database, database_url

HOLDER = "worker-7:4242:monitor.py"


@pytest.fixture
def registry(tmp_path: Path) -> tuple[dict[str, str], Settings]:
    """A stage environment whose store has versions 1-3 of a model, production moved None -> 1 -> 2 through
    the ledger."""
    log_url = f"sqlite:///{tmp_path / 'artifacts' / 'prediction_log.db'}"
    env = stage_env(tmp_path, HOUSING_MODEL_NAME="LedgerModel", HOUSING_PREDICTION_LOG_URL=log_url)
    settings = Settings(
        artifacts_dir=tmp_path / "artifacts",
        tracking_uri=env["MLFLOW_TRACKING_URI"],
        model_name="LedgerModel",
        prediction_log_url=log_url,
    )
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    client.create_registered_model(settings.model_name)
    (tmp_path / "model").mkdir()
    for _ in range(3):
        client.create_model_version(settings.model_name, source=str(tmp_path / "model"))
    with held_lock(settings.log_database_url, RETRAIN_LOCK, lease_seconds=60):
        for before, after in ((None, "1"), ("1", "2")):
            move_production(
                client,
                settings,
                expected=before,
                to_version=after,
                command="promote.py",
                reason="beats production",
                evidence={"r2": 0.8, "candidates": 3},
            )
        move_staging(client, settings, "2", command="promote.py", reason="as promote leaves it")
    return env, settings


def current(settings: Settings) -> str | None:
    return production_version(
        MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri), settings
    )


def test_promote_refuses_to_run_beside_a_retrain_and_rollback_says_a_retrain_is_in_progress(registry):
    env, settings = registry
    engine = make_engine(settings.log_database_url)
    lock = acquire_lock(engine, RETRAIN_LOCK, owner=HOLDER, lease_seconds=600)
    assert lock is not None
    try:
        promoted = run_in_process("promote.py", env=env)
        assert promoted.returncode == 0, promoted.stderr
        assert f"another retrain or promotion is running on {HOLDER} since " in promoted.stdout
        assert promoted.stdout.strip().endswith("UTC; not promoting")
        rolled = run_in_process("promote.py", "--rollback", env=env)
        assert rolled.returncode == 2
        assert rolled.stderr.strip().splitlines()[-1] == (  # before it: warnings and progress lines
            f"error: a retrain or promotion is in progress ({describe_holder(engine, RETRAIN_LOCK)}); not"
            " rolling back, try again when it ends"
        )
        assert current(settings) == "2"
        assert len(read_history(engine, settings.model_name)) == 2  # production's moves
        assert read_lock(engine, RETRAIN_LOCK) == lock  # neither process touched the holder's lease
    finally:
        release_lock(engine, lock)
        engine.dispose()


def test_rollback_and_history_from_the_command_line(registry):
    env, settings = registry
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    rolled = run_in_process("promote.py", "--rollback", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert "'production' of LedgerModel rolled back from version 2 to version 1" in rolled.stdout
    assert current(settings) == "1"
    assert (
        "staging" not in client.get_registered_model(settings.model_name).aliases
    )  # not left to come back as the challenger
    assert client.get_model_version(settings.model_name, "2").tags["shadow_verdict"].startswith("rolled back")
    again = run_in_process("promote.py", "--rollback", env=env)
    assert again.returncode == 2
    assert (
        again.stderr.strip().splitlines()[-1]
        == "error: the production ledger records no version of LedgerModel before version 1; nothing to roll"
        " back to"
    )
    history = run_in_process("promote.py", "--history", env=env)
    assert history.returncode == 0, history.stderr
    lines = history.stdout.strip().splitlines()
    assert len(lines) == 5  # production's three moves and staging's two, in the order they happened
    assert "production    - -> 1     promote.py  beats production  [candidates=3, r2=0.8]" in lines[0]
    assert "production    1 -> 2     promote.py  beats production" in lines[1]
    assert "staging       - -> 2     promote.py  as promote leaves it" in lines[2]
    assert (
        'production    2 -> 1     promote.py --rollback  rollback  [rolled_back_version="2",'
        ' undoes_command="promote.py", undoes_entry=2]' in lines[3]
    )
    assert "staging       2 -> unset  rollback  version 2 was rolled back" in lines[4]
    engine = make_engine(settings.log_database_url)
    try:
        assert describe_holder(engine, RETRAIN_LOCK) is None  # the rollback released its lease
    finally:
        engine.dispose()


def new_database(postgres: PostgresProvider, label: str) -> str:
    name = f"locks_{label}_{uuid.uuid4().hex[:8]}"
    create_database(postgres.admin_url, name)
    return database_url(postgres.admin_url, name)


@pytest.mark.postgres
def test_on_postgresql_exactly_one_racing_process_takes_the_lock_and_expired_leases_are_taken_over(
    postgres, tmp_path
):
    fresh_url, expired_url = new_database(postgres, "fresh"), new_database(postgres, "expired")
    engine = make_engine(expired_url)
    try:
        expired_lease(engine, RETRAIN_LOCK, "dead-host:1:monitor.py")
        fresh, expired = race_for_locks(
            [(fresh_url, RETRAIN_LOCK), (expired_url, RETRAIN_LOCK)], racers=4, work_dir=tmp_path / "race"
        )
        holder = read_lock(engine, RETRAIN_LOCK)
        assert holder is not None and holder.owner == the_winner(expired)
        assert acquire_lock(engine, RETRAIN_LOCK, owner=HOLDER, lease_seconds=60) is None
        assert release_lock(engine, holder) is True
        assert acquire_lock(engine, RETRAIN_LOCK, owner=HOLDER, lease_seconds=60) is not None
        assert describe_holder(engine, RETRAIN_LOCK) is not None
    finally:
        engine.dispose()
    fresh_engine = make_engine(fresh_url)
    try:
        fresh_holder = read_lock(fresh_engine, RETRAIN_LOCK)
        assert fresh_holder is not None and fresh_holder.owner == the_winner(fresh)
    finally:
        fresh_engine.dispose()


@pytest.mark.postgres
def test_on_postgresql_the_ledger_keeps_order_times_and_evidence(postgres):
    engine = make_engine(new_database(postgres, "ledger"))
    try:
        for minute, (before, after) in enumerate(((None, "1"), ("1", "2"), ("2", "3"))):
            at = datetime(2024, 1, 1, 12, minute, tzinfo=UTC)
            record_change(engine, LedgerEntry(at, "M", before, after, "monitor.py", "drift", {"r2": 0.7}))
        history = read_history(engine, "M")
        assert [(entry.from_version, entry.to_version) for entry in history] == [
            (None, "1"),
            ("1", "2"),
            ("2", "3"),
        ]
        assert history[2].at.isoformat() == "2024-01-01T12:02:00+00:00" and history[2].evidence == {"r2": 0.7}
        assert previous_production(engine, "M", "3") == "2"
    finally:
        engine.dispose()
