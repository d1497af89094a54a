"""``python -m housing.store.provision``, as the compose stack's ``init`` service and the Kubernetes Job run
it: the log's tables created by their owner, and the API's role granted what serving needs and nothing more.
On a real PostgreSQL: the role reads and inserts log rows, reads the labellers' digests and moves the
intervals' state, and is refused the ledger, the locks, the retraining rows and any new table. Running it
again changes nothing; a role name that is not plain, or a SQLite log with --grant-to, is refused in one
sentence."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import ProgrammingError

from housing.registry.ledger import create_ledger_table
from housing.store.locks import create_lock_table
from housing.store.retrain_evidence import ensure_tables as ensure_evidence_tables
from housing.store.tables import opened_engine
from tests.helpers import assert_refused, run_script
from tests.postgres import create_database, database_url, new_secret

PROVISION = "housing/store/provision.py"
SERVING = {
    "predictions": {"SELECT", "INSERT"},
    "feedback": {"SELECT", "INSERT"},
    "labellers": {"SELECT"},
    "interval_state": {"SELECT", "INSERT", "UPDATE"},
}
"""What the API's role may do, table by table; every other table of the database: nothing."""
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
WRITERS_OWN = {"production_ledger", "locks", "lock_fences", "retraining_rows"}
"""Tables the writer keeps in the same database: the API's role gets nothing on them."""


def environment(patch: pytest.MonkeyPatch, log_url: str, folder: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("HOUSING_", "MLFLOW_")):
            patch.delenv(key)
    patch.setenv("HOUSING_PREDICTION_LOG_URL", log_url)
    patch.setenv("HOUSING_ARTIFACTS_DIR", str(folder / "artifacts"))


def granted(admin_url: str, role: str) -> dict[str, set[str]]:
    """Every table of the database at ``admin_url``, with what ``role`` may do on it."""
    engine = create_engine(admin_url)
    try:
        with engine.connect() as connection:
            tables = connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
            return {
                table: {
                    privilege
                    for privilege in PRIVILEGES
                    if connection.execute(
                        text("SELECT has_table_privilege(:role, :table, :privilege)"),
                        {"role": role, "table": f'public."{table}"', "privilege": privilege},
                    ).scalar()
                }
                for table in list(tables)
            }
    finally:
        engine.dispose()


@pytest.fixture
def log_database(postgres) -> Iterator[tuple[str, str, str]]:
    """A fresh PostgreSQL database holding the writer's tables (ledger, locks, retraining rows) and a fresh
    login role for the API: (the database's admin URL, the role, its password); both dropped afterwards."""
    admin = postgres.admin_url
    database, role = f"provision_{uuid.uuid4().hex[:8]}", f"api_{uuid.uuid4().hex[:8]}"
    password = new_secret()
    server = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        create_database(admin, database)
        with server.connect() as connection:
            connection.execute(text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"))
        log_url = database_url(admin, database)
        with opened_engine(log_url) as engine:
            create_ledger_table(engine)
            create_lock_table(engine)
            ensure_evidence_tables(engine)
        yield log_url, role, password
    finally:  # the database first: its grants are what the role's drop would otherwise trip on
        with server.connect() as connection:
            try:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            finally:
                connection.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        server.dispose()


@pytest.mark.parametrize(
    "backend_name", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)  # a role and its grants exist on PostgreSQL only; SQLite's refusal: below
def test_the_api_role_gets_the_log_and_nothing_else_and_running_again_changes_nothing(
    backend_name, log_database, tmp_path, monkeypatch
):
    log_url, role, password = log_database
    environment(monkeypatch, log_url, tmp_path)
    code, out, err = run_script(PROVISION, "--grant-to", role, patch=monkeypatch)
    assert code == 0 and out.strip().endswith("the prediction log's tables are in place"), (out, err)
    assert out.count("GRANT ") == len(SERVING)
    rights = granted(log_url, role)
    assert {table: found for table, found in rights.items() if found} == SERVING
    assert set(rights) >= WRITERS_OWN  # there, and refused: nothing granted on them

    as_api = create_engine(make_url(log_url).set(username=role, password=password))
    try:
        with as_api.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM predictions")).scalar() == 0
            # CREATE: PostgreSQL 15+ gives PUBLIC none on the public schema, and provisioning adds none
            for refused in ("SELECT * FROM production_ledger", "CREATE TABLE mine (x int)"):
                with pytest.raises(ProgrammingError, match="permission denied"):
                    connection.execute(text(refused))
                connection.rollback()
    finally:
        as_api.dispose()

    code, out, err = run_script(PROVISION, "--grant-to", role, patch=monkeypatch)
    assert code == 0 and granted(log_url, role) == rights, (out, err)


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (("--grant-to", "api; DROP TABLE predictions"), "is not a plain PostgreSQL role name"),
        (("--grant-to", "housing_api\n"), "is not a plain PostgreSQL role name"),
        (("--grant-to", "housing_api"), "--grant-to needs a PostgreSQL prediction log: SQLite has no roles"),
    ],
)
def test_a_role_that_is_not_plain_or_a_sqlite_log_with_grants_is_refused_in_one_sentence(
    args, sentence, tmp_path, monkeypatch
):
    environment(monkeypatch, f"sqlite:///{tmp_path / 'log.db'}", tmp_path)
    assert_refused(run_script(PROVISION, *args, patch=monkeypatch), sentence)


def test_on_sqlite_it_creates_the_log_tables_and_grants_nothing(tmp_path, monkeypatch):
    environment(monkeypatch, f"sqlite:///{tmp_path / 'log.db'}", tmp_path)
    code, out, err = run_script(PROVISION, patch=monkeypatch)
    assert code == 0 and "GRANT" not in out and "tables are in place" in out, (out, err)
    with opened_engine(f"sqlite:///{tmp_path / 'log.db'}") as engine, engine.connect() as connection:
        tables = set(
            connection.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars()
        )
    assert set(SERVING) <= tables
