"""The lease lock on real SQLite files in a temp dir, with real processes racing for it: exactly one wins,
an expired lease or one whose holder on this machine is gone is taken over, every lease has a larger fence,
a lost lease confirms nothing, only its owner releases a lease, and the ``with`` form renews and always
releases."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from housing.errors import UserError
from housing.store.locks import (
    RETRAIN_LOCK,
    LeaseLost,
    acquire_lock,
    current_lease,
    current_owner,
    describe_holder,
    held_lock,
    holder_is_gone,
    locks_table,
    process_start_ticks,
    read_lock,
    release_lock,
    renew_lock,
)
from housing.store.tables import make_engine
from tests.helpers import expired_lease, race_for_locks, the_winner, wait_for


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
    lock = acquire_lock(engine, "retrain", owner="host-a:10:monitor.py", lease_seconds=60)
    assert lock is not None
    renewed = renew_lock(engine, lock, 120)
    assert renewed is not None and renewed.expires_at > lock.expires_at
    lapsed = acquire_lock(engine, "other", owner="host-a:10:monitor.py", lease_seconds=-1)
    assert lapsed is not None and renew_lock(engine, lapsed, 60) is None  # a lapsed lease is lost
    assert acquire_lock(engine, "retrain", owner="host-b:20:promote.py", lease_seconds=60) is None
    assert release_lock(engine, renewed) is True


def test_held_lock_yields_none_when_held_and_always_releases_its_own_lease(log_url, engine):
    with held_lock(log_url, "retrain", lease_seconds=60, owner="host-a:10:monitor.py") as lock:
        assert lock is not None
        with held_lock(engine, "retrain", lease_seconds=60, owner="host-b:20:promote.py") as other:
            assert other is None
        assert read_lock(engine, "retrain") == lock.lock  # the refused attempt released nothing
    assert describe_holder(engine, "retrain") is None
    with pytest.raises(RuntimeError), held_lock(engine, "retrain", lease_seconds=60) as lock:
        assert lock is not None
        raise RuntimeError("the retrain failed")
    assert describe_holder(engine, "retrain") is None


def test_the_owner_names_host_process_and_script_but_never_the_arguments(monkeypatch):
    monkeypatch.setattr(
        sys, "argv", ["/work/main/promote.py", "--tracking-uri", "postgresql://user:secret@db/mlflow"]
    )
    host, pid, started, command = current_owner().split(":")
    assert (pid, command) == (str(os.getpid()), "promote.py")
    assert started == process_start_ticks(os.getpid()) and started.isdigit()
    assert host and "secret" not in current_owner()


def a_process_that_is_gone() -> str:
    """The owner string of a process of this machine that ran and exited."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    started = process_start_ticks(process.pid)
    process.communicate(b"")
    return f"{socket.gethostname()}:{process.pid}:{started}:monitor.py"


def test_a_lease_whose_holder_on_this_machine_is_gone_is_taken_over_at_once(engine):
    gone = a_process_that_is_gone()
    assert holder_is_gone(gone) and not holder_is_gone(current_owner())
    assert not holder_is_gone("another-host:1:123:monitor.py")  # another machine: its lease decides
    reused = f"{socket.gethostname()}:{os.getpid()}:1:monitor.py"  # this id, but a process started earlier
    assert holder_is_gone(reused)
    dead = acquire_lock(engine, RETRAIN_LOCK, owner=gone, lease_seconds=3_600)
    assert dead is not None
    taken = acquire_lock(engine, RETRAIN_LOCK, owner=current_owner(), lease_seconds=60)
    assert taken is not None and taken.fence == dead.fence + 1
    assert acquire_lock(engine, RETRAIN_LOCK, owner="another-host:1:123:monitor.py", lease_seconds=60) is None


def test_a_lease_lost_to_another_holder_confirms_nothing_and_its_renewal_says_lost(engine):
    with held_lock(engine, RETRAIN_LOCK, lease_seconds=60, owner="host-a:10:1:monitor.py") as lease:
        assert lease is not None and current_lease(RETRAIN_LOCK) is lease
        with engine.begin() as connection:
            lease.confirm(connection)  # still its own
        with engine.begin() as connection:  # the lease lapses and another process takes it over
            connection.execute(
                update(locks_table).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert acquire_lock(engine, RETRAIN_LOCK, owner="host-b:20:1:promote.py", lease_seconds=60)
        with pytest.raises(LeaseLost, match="expired or was taken over"), engine.begin() as connection:
            lease.confirm(connection)
        assert lease.renew() is False and lease.lost.is_set()
    holder = read_lock(engine, RETRAIN_LOCK)
    assert holder is not None and holder.owner == "host-b:20:1:promote.py"  # the lost lease released nothing
    with pytest.raises(UserError, match="this process does not hold"):
        current_lease(RETRAIN_LOCK)


def test_a_held_lock_is_renewed_from_a_thread_while_the_block_runs(engine):
    with held_lock(engine, RETRAIN_LOCK, lease_seconds=3, owner="host-a:10:1:monitor.py") as lease:
        assert lease is not None
        first = lease.lock.expires_at
        renewed = wait_for(
            lambda: lease.lock.expires_at > first
        )  # a renewal every second: counted, not timed
        assert renewed and not lease.lost.is_set()
        assert read_lock(engine, RETRAIN_LOCK) == lease.lock
    assert read_lock(engine, RETRAIN_LOCK) is None


def test_every_acquisition_of_a_name_gets_a_larger_fence(engine):
    fences = []
    for owner in ("a:1:1:x", "b:2:1:y", "c:3:1:z"):
        lock = acquire_lock(engine, "retrain", owner=owner, lease_seconds=60)
        assert lock is not None
        fences.append(lock.fence)
        assert release_lock(engine, lock)
    assert fences == sorted(fences) and len(set(fences)) == 3
    other = acquire_lock(engine, "other", owner="a:1:1:x", lease_seconds=60)
    assert other is not None and other.fence == 1  # one counter per name
