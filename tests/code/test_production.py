"""Moving production by compare-and-set and rolling it back, against a real MLflow SQLite store and a real
prediction-log SQLite file in a temp dir. The registered versions point at an empty folder: only aliases
move here, no model is ever loaded, so no dataset and no training are needed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient
from sqlalchemy import update

from housing.config.settings import Settings
from housing.errors import UserError
from housing.registry.ledger import (
    ABANDONED,
    DONE,
    FAILED,
    FOUND,
    INTENT,
    ROLLBACK_REASON,
    UNSET,
    LedgerEntry,
    previous_production,
    read_history,
    record_change,
)
from housing.registry.production import (
    ProductionMoved,
    RetrainInProgress,
    move_production,
    move_staging,
    production_version,
    reconcile_ledger,
    rollback,
)
from housing.store.locks import RETRAIN_LOCK, LeaseLost, acquire_lock, held_lock, locks_table
from housing.store.tables import make_engine


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="module")
def client(store_dir: Path) -> MlflowClient:
    """One MLflow SQLite store for the module (creating it costs about a second)."""
    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


@pytest.fixture
def settings(client: MlflowClient, store_dir: Path, tmp_path: Path) -> Settings:
    """A fresh registered model with versions 1, 2 and 3, no alias, and an empty prediction log, per test."""
    name = f"Housing{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    source = store_dir / "model"
    source.mkdir(exist_ok=True)
    for _ in range(3):
        client.create_model_version(name, source=str(source))
    return Settings(
        artifacts_dir=tmp_path / "artifacts",
        tracking_uri=client.tracking_uri,
        model_name=name,
        prediction_log_url=f"sqlite:///{tmp_path / 'log.db'}",
    )


def history(settings: Settings) -> list[tuple[str | None, str, str, str]]:
    engine = make_engine(settings.log_database_url)
    try:
        return [
            (e.from_version, e.to_version, e.command, e.reason)
            for e in read_history(engine, settings.model_name)
        ]
    finally:
        engine.dispose()


def move(
    client: MlflowClient,
    settings: Settings,
    expected: str | None,
    to_version: str,
    reason: str = "beats production",
) -> None:
    """move_production under the retrain lock, as every caller holds it."""
    with held_lock(settings.log_database_url, RETRAIN_LOCK, lease_seconds=60) as lease:
        assert lease is not None
        move_production(
            client,
            settings,
            expected=expected,
            to_version=to_version,
            command="promote.py",
            reason=reason,
            evidence={"r2": 0.8},
        )


def entries(settings: Settings) -> list[tuple[str, str | None, str, str]]:
    """(alias, from, to, status) of every ledger entry, oldest first."""
    engine = make_engine(settings.log_database_url)
    try:
        return [
            (e.alias, e.from_version, e.to_version, e.status)
            for e in read_history(engine, settings.model_name, alias=None)
        ]
    finally:
        engine.dispose()


def test_move_production_sets_the_alias_and_appends_to_the_ledger(client, settings):
    move(client, settings, None, "1", reason="there was no production model")
    move(client, settings, "1", "2")
    assert production_version(client, settings) == "2"
    assert str(client.get_model_version_by_alias(settings.model_name, "production").version) == "2"
    assert history(settings) == [
        (None, "1", "promote.py", "there was no production model"),
        ("1", "2", "promote.py", "beats production"),
    ]
    engine = make_engine(settings.log_database_url)
    assert read_history(engine, settings.model_name)[-1].evidence == {"r2": 0.8}
    engine.dispose()


def test_a_stale_expectation_moves_nothing_and_records_nothing(client, settings):
    client.set_registered_model_alias(settings.model_name, "production", "1")
    with pytest.raises(ProductionMoved, match="is now version 1, not version 2") as raised:
        move(client, settings, "2", "3")
    assert "\n" not in str(raised.value)
    with pytest.raises(ProductionMoved, match="is now version 1, not unset"):
        move(client, settings, None, "3")
    assert production_version(client, settings) == "1"
    assert history(settings) == []


def test_rollback_moves_production_back_and_is_itself_a_ledger_entry(client, settings):
    move(client, settings, None, "1")
    move(client, settings, "1", "2")
    move(client, settings, "2", "3")
    assert rollback(client, settings, "promote.py --rollback") == ("3", "2")
    assert production_version(client, settings) == "2"
    assert history(settings)[-1] == ("3", "2", "promote.py --rollback", ROLLBACK_REASON)
    assert rollback(client, settings, "promote.py --rollback") == ("2", "1")  # further back, not back to 3
    with pytest.raises(UserError, match="no version of .* before version 1; nothing to roll back to"):
        rollback(client, settings, "promote.py --rollback")
    assert production_version(client, settings) == "1"
    assert len(history(settings)) == 5


def test_rollback_refuses_while_a_retrain_holds_the_lock(client, settings):
    move(client, settings, None, "1")
    move(client, settings, "1", "2")
    engine = make_engine(settings.log_database_url)
    try:
        assert (
            acquire_lock(engine, RETRAIN_LOCK, owner="worker-7:4242:monitor.py", lease_seconds=60) is not None
        )
        with pytest.raises(
            RetrainInProgress,
            match=r"in progress \(worker-7:4242:monitor.py since .* UTC\); not rolling back",
        ):
            rollback(client, settings, "promote.py --rollback")
    finally:
        engine.dispose()
    assert production_version(client, settings) == "2"
    assert len(history(settings)) == 2


def test_rollback_without_production_or_without_a_ledger_says_so(client, settings):
    with pytest.raises(UserError, match="has no 'production' version; there is nothing to roll back"):
        rollback(client, settings, "promote.py --rollback")
    client.set_registered_model_alias(
        settings.model_name, "production", "2"
    )  # set by hand, outside the ledger
    with pytest.raises(UserError, match="records no version of .* before version 2"):
        rollback(client, settings, "promote.py --rollback")
    assert production_version(client, settings) == "2"


def test_rollback_refuses_a_previous_version_deleted_from_the_registry(client, settings):
    move(client, settings, None, "1")
    move(client, settings, "1", "2")
    client.delete_model_version(settings.model_name, "1")
    with pytest.raises(UserError, match="version 1 of .* no longer exists in the registry"):
        rollback(client, settings, "promote.py --rollback")
    assert production_version(client, settings) == "2"


def test_only_a_holder_of_the_retrain_lock_moves_production(client, settings):
    with pytest.raises(UserError, match="needs lock 'retrain', which this process does not hold"):
        move_production(client, settings, expected=None, to_version="1", command="x", reason="y", evidence={})
    assert production_version(client, settings) is None and history(settings) == []


def test_a_holder_that_lost_its_lease_moves_nothing_and_records_nothing(client, settings):
    move(client, settings, None, "1")
    engine = make_engine(settings.log_database_url)
    try:
        with held_lock(engine, RETRAIN_LOCK, lease_seconds=60, owner="host-a:10:1:monitor.py") as lease:
            assert lease is not None
            with engine.begin() as connection:  # stalled past its lease; another process took the lock
                connection.execute(update(locks_table).values(expires_at=datetime.now(UTC)))
            assert acquire_lock(engine, RETRAIN_LOCK, owner="host-b:20:1:promote.py", lease_seconds=60)
            with pytest.raises(LeaseLost):
                move_production(
                    client,
                    settings,
                    expected="1",
                    to_version="3",
                    command="monitor.py",
                    reason="r",
                    evidence={},
                )
    finally:
        engine.dispose()
    assert production_version(client, settings) == "1"
    assert entries(settings) == [("production", None, "1", DONE)]


def test_a_move_is_an_intent_then_done_and_a_failed_move_is_recorded_failed(client, settings):
    class Unreachable(MlflowClient):
        def set_registered_model_alias(self, *args: object, **kwargs: object) -> None:
            raise ConnectionError("the tracking server went away")

    move(client, settings, None, "1")
    with pytest.raises(ConnectionError):
        move(Unreachable(client.tracking_uri, registry_uri=client.tracking_uri), settings, "1", "2")
    assert production_version(client, settings) == "1"
    assert entries(settings) == [("production", None, "1", DONE), ("production", "1", "2", FAILED)]
    assert rollback_target(settings, "1") is None  # a failed move is no history to roll back along


def rollback_target(settings: Settings, current: str) -> str | None:
    engine = make_engine(settings.log_database_url)
    try:
        return previous_production(engine, settings.model_name, current)
    finally:
        engine.dispose()


def test_reconcile_settles_an_intent_a_crash_left_and_records_an_alias_moved_by_hand(client, settings):
    move(client, settings, None, "1")
    engine = make_engine(settings.log_database_url)
    try:
        for to_version, moved in (
            ("2", True),
            ("3", False),
        ):  # crashed after the intent, with or without move
            record_change(
                engine,
                LedgerEntry(
                    datetime.now(UTC),
                    settings.model_name,
                    "1",
                    to_version,
                    "monitor.py",
                    "r",
                    {},
                    status=INTENT,
                ),
            )
            if moved:
                client.set_registered_model_alias(settings.model_name, "production", to_version)
                with held_lock(engine, RETRAIN_LOCK, lease_seconds=60):
                    said = reconcile_ledger(client, settings, engine, "monitor.py")
                assert len(said) == 1 and "was made" in said[0]
                client.set_registered_model_alias(settings.model_name, "production", "1")  # back, by hand
        with held_lock(engine, RETRAIN_LOCK, lease_seconds=60):
            said = reconcile_ledger(client, settings, engine, "monitor.py")
        assert "never made" in said[0] and "names version 1 but the ledger says version 2" in said[1]
        with held_lock(engine, RETRAIN_LOCK, lease_seconds=60):
            assert reconcile_ledger(client, settings, engine, "monitor.py") == []  # they agree now
    finally:
        engine.dispose()
    assert entries(settings) == [
        ("production", None, "1", DONE),
        ("production", "1", "2", DONE),
        ("production", "1", "3", ABANDONED),
        ("production", "2", "1", FOUND),
    ]


def test_staging_moves_are_recorded_beside_productions(client, settings):
    with held_lock(settings.log_database_url, RETRAIN_LOCK, lease_seconds=60):
        move_staging(client, settings, "2", command="promote.py", reason="best passing candidate")
        move_staging(client, settings, "2", command="promote.py", reason="unchanged: not recorded")
        move_staging(client, settings, None, command="monitor.py", reason="reject: worse on live traffic")
    assert entries(settings) == [("staging", None, "2", DONE), ("staging", "2", UNSET, DONE)]
    assert history(settings) == []  # the production history holds production's moves only
