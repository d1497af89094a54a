"""The lease lock on real SQLite files in a temp dir, with real processes racing for it: exactly one wins,
an expired lease is taken over, only its owner releases a lease, and the ``with`` form always releases."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from housing.store.locks import (
    RETRAIN_LOCK,
    acquire_lock,
    current_owner,
    describe_holder,
    held_lock,
    locks_table,
    read_lock,
    release_lock,
    renew_lock,
)
from housing.store.tables import make_engine
from tests.helpers import expired_lease, race_for_locks, the_winner


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log' / 'predictions.db'}"


@pytest.fixture
def engine(log_url: str):
    opened = make_engine(log_url)
    yield opened
    opened.dispose()


def test_processes_racing_for_a_lock_exactly_one_wins_on_a_fresh_database_and_over_an_expired_lease(tmp_path):
    fresh_url, expired_url = (
        f"sqlite:///{tmp_path / name / 'predictions.db'}" for name in ("fresh", "expired")
    )
    expired_engine = make_engine(expired_url)
    try:
        expired_lease(expired_engine, RETRAIN_LOCK, "dead-host:1:monitor.py")
        fresh, expired = race_for_locks(
            [(fresh_url, RETRAIN_LOCK), (expired_url, RETRAIN_LOCK)], racers=3, work_dir=tmp_path / "race"
        )
        holders = {}
        for url, answers in ((fresh_url, fresh), (expired_url, expired)):
            engine = make_engine(url)
            holders[url] = read_lock(engine, RETRAIN_LOCK)
            with engine.connect() as connection:
                assert connection.execute(select(locks_table.c.owner)).scalars().all() == [
                    the_winner(answers)
                ]  # the dead lease is gone
            engine.dispose()
    finally:
        expired_engine.dispose()
    fresh_holder, expired_holder = holders[fresh_url], holders[expired_url]
    assert fresh_holder is not None and fresh_holder.owner == the_winner(fresh)
    assert expired_holder is not None and expired_holder.owner == the_winner(expired)


def test_a_held_lock_is_refused_to_another_owner_and_named_in_the_message(engine):
    lock = acquire_lock(engine, "retrain", owner="host-a:10:monitor.py", lease_seconds=60)
    assert lock is not None and lock.expires_at - lock.acquired_at == timedelta(seconds=60)
    assert acquire_lock(engine, "retrain", owner="host-b:20:promote.py", lease_seconds=60) is None
    assert (
        acquire_lock(engine, "retrain", owner="host-a:10:monitor.py", lease_seconds=60) is None
    )  # not re-entrant
    assert (
        acquire_lock(engine, "other", owner="host-b:20:promote.py", lease_seconds=60) is not None
    )  # names are independent
    description = describe_holder(engine, "retrain")
    assert description == f"host-a:10:monitor.py since {lock.acquired_at:%Y-%m-%d %H:%M:%S} UTC"


def test_an_expired_lease_is_taken_over_and_its_old_owner_can_no_longer_release_or_renew_it(engine):
    old = acquire_lock(engine, "retrain", owner="host-a:10:monitor.py", lease_seconds=-1)  # lapsed already
    assert old is not None
    assert describe_holder(engine, "retrain") is None  # expired: nobody holds it
    new = acquire_lock(engine, "retrain", owner="host-b:20:promote.py", lease_seconds=60)
    assert new is not None
    assert release_lock(engine, old) is False
    assert renew_lock(engine, old, 60) is None
    holder = read_lock(engine, "retrain")
    assert holder is not None and holder.owner == "host-b:20:promote.py"


def test_only_the_owner_of_a_lease_releases_it(engine):
    lock = acquire_lock(engine, "retrain", owner="host-a:10:monitor.py", lease_seconds=60)
    assert lock is not None
    impostor = type(lock)(lock.name, "host-b:20:promote.py", lock.acquired_at, lock.expires_at)
    assert release_lock(engine, impostor) is False
    assert describe_holder(engine, "retrain") is not None
    assert release_lock(engine, lock) is True
    assert describe_holder(engine, "retrain") is None
    assert acquire_lock(engine, "retrain", owner="host-b:20:promote.py", lease_seconds=60) is not None


def test_renewing_a_lease_keeps_it_past_its_first_expiry(engine):
    lock = acquire_lock(engine, "retrain", owner="host-a:10:monitor.py", lease_seconds=-1)  # lapsed already
    assert lock is not None
    renewed = renew_lock(engine, lock, 60)  # nobody took it meanwhile: the holder keeps it
    assert renewed is not None and renewed.expires_at > lock.expires_at
    assert acquire_lock(engine, "retrain", owner="host-b:20:promote.py", lease_seconds=60) is None
    assert release_lock(engine, renewed) is True


def test_held_lock_yields_none_when_held_and_always_releases_its_own_lease(log_url, engine):
    with held_lock(log_url, "retrain", lease_seconds=60, owner="host-a:10:monitor.py") as lock:
        assert lock is not None
        with held_lock(engine, "retrain", lease_seconds=60, owner="host-b:20:promote.py") as other:
            assert other is None
        assert read_lock(engine, "retrain") == lock  # the refused attempt released nothing
    assert describe_holder(engine, "retrain") is None
    with pytest.raises(RuntimeError), held_lock(engine, "retrain", lease_seconds=60) as lock:
        assert lock is not None
        raise RuntimeError("the retrain failed")
    assert describe_holder(engine, "retrain") is None


def test_the_owner_names_host_process_and_script_but_never_the_arguments(monkeypatch):
    monkeypatch.setattr(
        sys, "argv", ["/work/main/promote.py", "--tracking-uri", "postgresql://user:secret@db/mlflow"]
    )
    host, pid, command = current_owner().split(":")
    assert (pid, command) == (str(os.getpid()), "promote.py")
    assert host and "secret" not in current_owner()
