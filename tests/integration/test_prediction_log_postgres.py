"""The prediction log on PostgreSQL: a batch retried after an unclear failure is stored once, two
conflicting labels at once store the first and refuse the other, and a blocked write ends at the statement
timeout."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from housing.store.prediction_log import PredictionLog
from housing.store.tables import make_engine
from tests.helpers import (
    check_a_batch_retried_after_an_unclear_failure_is_stored_once,
    check_two_conflicting_labels_at_once_store_the_first_and_refuse_the_other,
    finishes,
    rows_for,
)
from tests.postgres import create_database, database_url


@pytest.mark.postgres
def test_on_postgresql_a_retried_batch_is_stored_once_and_conflicting_labels_store_one(postgres, tmp_path):
    for spill_dir in (None, tmp_path / "spill"):
        database = f"log_promises_{uuid.uuid4().hex[:8]}"
        create_database(postgres.admin_url, database)
        check_a_batch_retried_after_an_unclear_failure_is_stored_once(
            database_url(postgres.admin_url, database), spill_dir
        )
    database = f"log_labels_{uuid.uuid4().hex[:8]}"
    create_database(postgres.admin_url, database)
    check_two_conflicting_labels_at_once_store_the_first_and_refuse_the_other(
        database_url(postgres.admin_url, database)
    )


@pytest.mark.postgres
def test_on_postgresql_a_write_blocked_by_a_lock_ends_at_the_statement_timeout_and_spills(postgres, tmp_path):
    """Another session holds the predictions table: the writer's INSERT is cancelled by PostgreSQL's
    statement_timeout (it does not wait for the lock forever), the rows go to the spill file, and they reach
    the database once the lock is gone."""
    database = f"log_timeout_{uuid.uuid4().hex[:8]}"
    create_database(postgres.admin_url, database)
    url = database_url(postgres.admin_url, database)
    log = PredictionLog(url, spill_dir=tmp_path / "spill", statement_timeout=1.0)
    log.append(rows_for(log, ["a"]))
    assert log.flush()
    blocker = make_engine(url)
    try:
        with blocker.begin() as connection:
            connection.execute(text("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE"))
            log.append(rows_for(log, ["b", "c"], minutes=1))
            assert finishes(log.flush) is False  # cancelled by the server, not left waiting
            assert "statement timeout" in (log.last_error or "")
            assert log.status().spilled_rows == 2
        assert log.flush() is True  # the lock is gone: the spill is replayed
        with log.engine.connect() as connection:
            stored = connection.execute(text("select request_id from predictions order by request_id"))
            assert list(stored.scalars()) == ["a", "b", "c"]
    finally:
        blocker.dispose()
        log.close()
