"""PostgreSQL and the MLflow tracking server for the tests' second backend, started for real.

A private PostgreSQL cluster with password (scram-sha-256) authentication, from the system's binaries or,
without PostgreSQL installed, those of the ``pgserver`` wheel; and the team's tracking server on it, started
by the product's own launcher (``python -m housing.registry.tracking_server``: basic authentication, the
artifacts served, the writer and reader accounts). Secrets are generated per test run and reach child
processes through their environment, never a command line. ``bench/serve.py`` uses the cluster too.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from housing.config.settings import PROJECT_DIR
from housing.errors import UserError
from housing.registry.tracking_server import READER_USER, WRITER_USER

POSTGRES_USER = "housing"


def new_secret() -> str:
    """A fresh random secret, URL-safe (it goes into URLs as is)."""
    return secrets.token_urlsafe(24)


def write_private_file(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` readable by its owner only (0600, in a folder made 0700 if created
    here)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(content)


def postgres_bin_dir() -> Path:
    """The PostgreSQL server binaries: the system's (Debian: /usr/lib/postgresql/<version>/bin, or initdb on
    PATH), else the ones the ``pgserver`` wheel ships (a test dependency, so that a machine without
    PostgreSQL installed still runs the PostgreSQL tests; its module is located, not imported)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        wheel_bin = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (wheel_bin / "initdb").exists():
            return wheel_bin
    raise UserError(
        "PostgreSQL is not installed: apt-get install postgresql, or pip install pgserver (it ships the"
        " server binaries)"
    )


def server_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, its tools run as the system's ``postgres`` user when it
    exists (Debian's package creates it), else as ``nobody``; otherwise as the current user (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


def _as_server_user(command: list[str]) -> list[str]:
    user = server_user()
    return command if user is None else ["runuser", "-u", user, "--", *command]


def _chown_for_server(*paths: Path) -> None:
    """Give ``paths`` (recursively) to the server user when the tools run as one."""
    user_name = server_user()
    if user_name is not None:
        user = pwd.getpwnam(user_name)
        for path in paths:
            for root, dirs, files in os.walk(path):
                for name in [Path(root), *(Path(root) / d for d in dirs), *(Path(root) / f for f in files)]:
                    os.chown(name, user.pw_uid, user.pw_gid)


@dataclass
class Postgres:
    """A private PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port``, whose superuser
    ``housing`` logs in with ``password`` (scram-sha-256, for TCP and the Unix socket alike)."""

    data_dir: Path
    port: int
    password: str = field(default_factory=new_secret, repr=False)

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on this cluster, with the password."""
        return URL.create(
            "postgresql+psycopg", POSTGRES_USER, self.password, "127.0.0.1", self.port, database
        ).render_as_string(hide_password=False)

    def start(self) -> Postgres:
        bin_dir = postgres_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            _chown_for_server(self.data_dir)
            self._initdb(bin_dir)
        if self.running():
            return self
        log = self.data_dir / "server.log"
        subprocess.run(
            _as_server_user(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c max_connections=200",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        return self

    def _initdb(self, bin_dir: Path) -> None:
        """initdb with scram-sha-256 and the password in a pwfile that only the server user can read, and
        only while initdb runs (a private temporary folder, removed right after)."""
        pwfile_dir = Path(tempfile.mkdtemp(prefix="housing-initdb-"))
        try:
            pwfile = pwfile_dir / "pwfile"
            write_private_file(pwfile, self.password + "\n")
            _chown_for_server(pwfile_dir)
            subprocess.run(
                _as_server_user(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        POSTGRES_USER,
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "--encoding=UTF8",
                        "--no-instructions",
                    ]
                ),
                check=True,
                capture_output=True,
            )
        finally:
            shutil.rmtree(pwfile_dir, ignore_errors=True)

    def running(self) -> bool:
        result = subprocess.run(
            _as_server_user([str(postgres_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "status"]),
            capture_output=True,
        )
        return result.returncode == 0

    def stop(self) -> None:
        if self.data_dir.exists() and self.running():
            subprocess.run(
                _as_server_user(
                    [str(postgres_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
                ),
                capture_output=True,
            )


def create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE ``name`` unless it exists."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` pointing at database ``name``."""
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def wait_http(url: str, process: subprocess.Popen | None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise UserError(f"the process serving {url} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise UserError(f"{url} did not answer within {timeout:.0f} s")


@dataclass(frozen=True)
class TrackingServer:
    """A running tracking server, the accounts its clients log in with, and its process."""

    url: str
    writer_password: str
    reader_password: str
    process: subprocess.Popen[bytes]

    def client_env(self, user: str = WRITER_USER) -> dict[str, str]:
        """MLflow's credential variables of ``user`` (the stages' writer unless told otherwise)."""
        password = self.writer_password if user == WRITER_USER else self.reader_password
        return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def start_tracking_server(
    backend_uri: str, auth_uri: str, artifacts_dir: Path, port: int, log_path: Path, passwords: dict[str, str]
) -> TrackingServer:
    """``python -m housing.registry.tracking_server`` on ``backend_uri`` (accounts in ``auth_uri``), serving
    ``artifacts_dir`` on 127.0.0.1:``port``; ``passwords``: admin, writer, reader, flask."""
    command = [
        sys.executable,
        "-m",
        "housing.registry.tracking_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--artifacts-destination",
        str(artifacts_dir),
        "--workers",
        "1",
    ]
    env = dict(
        os.environ,
        MLFLOW_BACKEND_STORE_URI=backend_uri,
        HOUSING_TRACKING_AUTH_DATABASE_URI=auth_uri,
        HOUSING_TRACKING_ADMIN_PASSWORD=passwords["admin"],
        HOUSING_TRACKING_WRITER_PASSWORD=passwords[WRITER_USER],
        HOUSING_TRACKING_READER_PASSWORD=passwords[READER_USER],
        MLFLOW_FLASK_SERVER_SECRET_KEY=passwords["flask"],
    )
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child keeps the log file open
    process = subprocess.Popen(
        command, cwd=PROJECT_DIR, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", process)
    deadline = time.monotonic() + 60
    while b"tracking server on" not in log_path.read_bytes():  # the accounts exist once it says so
        if process.poll() is not None or time.monotonic() > deadline:
            raise UserError(f"the tracking server did not start:\n{log_path.read_text()}")
        time.sleep(0.2)
    return TrackingServer(url, passwords[WRITER_USER], passwords[READER_USER], process)
