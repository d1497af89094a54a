"""The two backends every integration test runs against: the embedded default (SQLite files) and the team
setup (an MLflow tracking server on PostgreSQL serving the artifacts, and the prediction log on PostgreSQL).

PostgreSQL comes from HOUSING_TEST_POSTGRES_URL (an admin SQLAlchemy URL; CI starts Debian's cluster and
sets it) or, when that is unset, from a private cluster the test run starts (tests/postgres.py)
with the system's binaries or, without PostgreSQL installed, those of the ``pgserver`` wheel
(requirements/dev.lock). The PostgreSQL half of the tests carries the ``postgres`` marker: when none of these
is available it is skipped with one line saying how to run it, and with HOUSING_REQUIRE_POSTGRES=1 (CI) it
fails instead (tests/conftest.py).

Like the deployment, the private cluster needs a password and every tracking server is the product's own
launcher with MLflow's basic authentication and its accounts: the stages, the API and the test process log in
as the writer (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD); one set of passwords per test run
(:attr:`PostgresProvider.passwords`).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError

from housing.errors import UserError
from housing.registry.tracking_server import READER_USER, WRITER_USER
from tests.postgres import (
    Postgres,
    TrackingServer,
    create_database,
    database_url,
    new_secret,
    postgres_bin_dir,
    start_tracking_server,
)
from tests.server import free_port

BACKENDS = ("sqlite", "postgres")


@dataclass
class Backend:
    """Where one isolated set of stores lives."""

    name: str
    work_dir: Path
    tracking_uri: str
    admin_url: str | None = None
    tracking_db_url: str | None = None
    """The tracking server's PostgreSQL database (PostgreSQL backend only)."""
    tracking_server: TrackingServer | None = None
    """The tracking server with its accounts (PostgreSQL backend only)."""
    processes: list[subprocess.Popen] = field(default_factory=list)

    def credentials_env(self, user: str = WRITER_USER) -> dict[str, str]:
        """MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD of ``user`` (the writer, as the stages log in);
        nothing for SQLite."""
        return {} if self.tracking_server is None else self.tracking_server.client_env(user)

    def new_log_url(self, label: str) -> str:
        """A fresh, empty prediction log database."""
        if self.name == "sqlite":
            return f"sqlite:///{self.work_dir / f'{label}-{uuid.uuid4().hex[:8]}.db'}"
        assert self.admin_url is not None, "a PostgreSQL backend has an admin URL"
        name = f"log_{label}_{uuid.uuid4().hex[:8]}".replace("-", "_")
        create_database(self.admin_url, name)
        return database_url(self.admin_url, name)

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def postgres_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run on this machine, with how to make them run; None when they can."""
    if os.environ.get("HOUSING_TEST_POSTGRES_URL"):
        return None
    try:
        postgres_bin_dir()
    except UserError:
        return (
            "no PostgreSQL found; to run them: apt-get install postgresql, or pip install pgserver, "
            "or set HOUSING_TEST_POSTGRES_URL to an admin SQLAlchemy URL"
        )
    return None


class PostgresProvider:
    """One PostgreSQL for the whole test session."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.private: Postgres | None = None
        self._admin_url: str | None = os.environ.get("HOUSING_TEST_POSTGRES_URL") or None
        self.passwords = {name: new_secret() for name in ("admin", WRITER_USER, READER_USER, "flask")}
        """The tracking servers' account passwords and signing key, the same for every server of the run."""

    def tracking_credentials_env(self) -> dict[str, str]:
        """MLflow's credential variables for the test run's tracking servers: the writer's."""
        return {
            "MLFLOW_TRACKING_USERNAME": WRITER_USER,
            "MLFLOW_TRACKING_PASSWORD": self.passwords[WRITER_USER],
        }

    @property
    def admin_url(self) -> str:
        if self._admin_url is None:
            if os.geteuid() == 0:  # the server runs as the postgres user: it needs a folder it can reach
                self.work_dir = Path(tempfile.mkdtemp(prefix="housing-test-pg-"))
                os.chmod(self.work_dir, 0o755)
            self.private = Postgres(self.work_dir / "pgdata", free_port()).start()
            self._admin_url = self.private.admin_url
        return self._admin_url

    def close(self) -> None:
        if self.private is not None:
            self.private.stop()
            if os.geteuid() == 0:
                shutil.rmtree(self.work_dir, ignore_errors=True)


def make_backend(name: str, work_dir: Path, postgres: PostgresProvider, label: str) -> Backend:
    """A backend with its own empty tracking store (and, for PostgreSQL, its own tracking server)."""
    if name == "sqlite":
        return Backend(name, work_dir, f"sqlite:///{work_dir / 'mlflow.db'}")
    database = f"mlflow_{label}_{uuid.uuid4().hex[:8]}"
    create_database(postgres.admin_url, database)
    return tracking_server_backend(work_dir, postgres, database)


def tracking_server_backend(work_dir: Path, postgres: PostgresProvider, database: str) -> Backend:
    """A PostgreSQL backend: the product's tracking server (basic authentication, its accounts in
    ``work_dir/mlflow-auth.db``) on ``database``, serving the artifacts in ``work_dir/mlartifacts``."""
    db_url = database_url(postgres.admin_url, database)
    server = start_tracking_server(
        db_url,
        f"sqlite:///{work_dir / 'mlflow-auth.db'}",
        work_dir / "mlartifacts",
        free_port(),
        work_dir / "mlflow-server.log",
        postgres.passwords,
    )
    return Backend(
        "postgres",
        work_dir,
        server.url,
        admin_url=postgres.admin_url,
        tracking_db_url=db_url,
        tracking_server=server,
        processes=[server.process],
    )


def copy_backend(source: Backend, work_dir: Path, postgres: PostgresProvider, label: str) -> Backend:
    """A backend holding a copy of ``source``'s tracking store and artifacts, for tests that move aliases and
    register versions: what a training run would have written, without training again. SQLite: the database
    through SQLite's backup API, the artifact folder copied, and every path in the store that names the old
    folder pointed at the new one. PostgreSQL: ``CREATE DATABASE ... TEMPLATE`` of the store (the source's
    tracking server disconnected for the moment it takes), the artifacts copied, a tracking server of its
    own."""
    if source.name == "sqlite":
        backup_sqlite(source.work_dir / "mlflow.db", work_dir / "mlflow.db")
        shutil.copytree(source.work_dir / "mlruns", work_dir / "mlruns")
        repoint_paths(work_dir / "mlflow.db", str(source.work_dir), str(work_dir))
        return Backend(source.name, work_dir, f"sqlite:///{work_dir / 'mlflow.db'}")
    assert source.tracking_db_url is not None and source.admin_url is not None
    database = f"mlflow_{label}_{uuid.uuid4().hex[:8]}"
    copy_database(source.admin_url, make_url(source.tracking_db_url).database or "", database)
    shutil.copytree(source.work_dir / "mlartifacts", work_dir / "mlartifacts")
    backup_sqlite(source.work_dir / "mlflow-auth.db", work_dir / "mlflow-auth.db")  # who owns what
    return tracking_server_backend(work_dir, postgres, database)


def backup_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of an SQLite database, whatever connections have it open (SQLite's backup API)."""
    origin, copy = sqlite3.connect(source), sqlite3.connect(target)
    try:
        origin.backup(copy)
    finally:
        origin.close()
        copy.close()


def repoint_paths(database: Path, old: str, new: str) -> None:
    """Replace the folder ``old`` by ``new`` in every text value of every table (artifact locations, URIs)."""
    connection = sqlite3.connect(database)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [
                row[1]
                for row in connection.execute(f'PRAGMA table_info("{table}")')
                if "CHAR" in row[2] or "TEXT" in row[2].upper()
            ]
            for column in columns:
                update = f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?)'
                connection.execute(f'{update} WHERE instr("{column}", ?) > 0', (old, new, old))
        connection.commit()
    finally:
        connection.close()


def copy_database(admin_url: str, source: str, target: str, attempts: int = 20) -> None:
    """``CREATE DATABASE target TEMPLATE source``, first disconnecting whoever is connected to ``source`` (a
    tracking server's pool reconnects on its next request); tried again while a connection comes back."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for attempt in range(1, attempts + 1):
                connection.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": source},
                )
                try:
                    connection.execute(text(f'CREATE DATABASE "{target}" TEMPLATE "{source}"'))
                    return
                except DBAPIError as error:
                    if attempt == attempts or "is being accessed by other users" not in str(error):
                        raise
                    time.sleep(0.1)
    finally:
        engine.dispose()
