"""The prediction log on PostgreSQL: a batch retried after an unclear failure is stored once, and two
conflicting labels at once store the first and refuse the other."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import (
    check_a_batch_retried_after_an_unclear_failure_is_stored_once,
    check_two_conflicting_labels_at_once_store_the_first_and_refuse_the_other,
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
