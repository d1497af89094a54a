"""The local team setup's moving parts, without Docker: a private PostgreSQL cluster with password
(scram-sha-256) authentication, an MLflow tracking server on it with MLflow's basic authentication that also
serves the artifacts, and the API with several worker processes.

Secrets (the PostgreSQL password, the tracking server's admin password and Flask secret key) are generated
once with :func:`secrets.token_urlsafe` and kept owner-only (files 0600 in a 0700 folder); URLs that carry
them are passed to child processes through their environment or a 0600 file, never on a command line.

Developer tooling, not part of the ``housing`` core package: ``python -m localteam`` (the command line in
``__main__.py``) and the integration tests' PostgreSQL backend use these functions.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from housing.config import PROJECT_DIR
from housing.errors import UserError

TEAM_DIR = PROJECT_DIR / ".team"
"""State of the team setup: the cluster's data, the tracking server's artifacts, logs, pid files."""
POSTGRES_USER = "housing"
TRACKING_ADMIN_USER = "admin"
"""The tracking server's admin user, the one the stages and the API use (MLFLOW_TRACKING_USERNAME)."""


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


def read_or_create_secret(path: Path) -> str:
    """The secret kept in ``path``, generated (and written 0600) on first use."""
    if path.exists():
        return path.read_text().strip()
    secret = new_secret()
    write_private_file(path, secret + "\n")
    return secret


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
        elif uses_trust_authentication(self.data_dir):
            raise UserError(
                f"{self.data_dir} was created by an earlier version without passwords (trust authentication):"
                f" stop it (python -m localteam down) and delete {self.data_dir.parent} to recreate it"
            )
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


def uses_trust_authentication(data_dir: Path) -> bool:
    """Whether the cluster in ``data_dir`` lets clients in without a password (pg_hba.conf has ``trust``)."""
    rules = [
        line.split()
        for line in (data_dir / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return any(rule[-1] == "trust" for rule in rules)


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
class TrackingAuth:
    """The tracking server's basic authentication: its config file (``MLFLOW_AUTH_CONFIG_PATH``, 0600: it
    holds the admin password and the auth database's URL), the admin credentials clients log in with, and
    the Flask secret key the server signs its forms with."""

    config_path: Path
    username: str
    password: str = field(repr=False)
    secret_key: str = field(repr=False)

    def client_env(self) -> dict[str, str]:
        """What a client (a stage, the API, MlflowClient) needs: MLflow's standard credential variables."""
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}

    def server_env(self) -> dict[str, str]:
        return {
            "MLFLOW_AUTH_CONFIG_PATH": str(self.config_path),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
        }


def write_tracking_auth(config_path: Path, database_uri: str, password: str, secret_key: str) -> TrackingAuth:
    """Write the basic-auth config (``[mlflow]`` section of mlflow/server/auth/basic_auth.ini) to
    ``config_path``, 0600: everyone authenticated may read, only the admin ``TRACKING_ADMIN_USER`` (created
    with ``password`` on the first start against an empty ``database_uri``) may write, e.g. move the
    ``production`` alias."""
    write_private_file(
        config_path,
        "\n".join(
            [
                "[mlflow]",
                "default_permission = READ",
                f"database_uri = {database_uri}",
                f"admin_username = {TRACKING_ADMIN_USER}",
                f"admin_password = {password}",
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
                # without the cache every request pays a password hash (scrypt, ~0.15 s of CPU) in the
                # server's single worker: a model download of ~100 files then takes a minute under load; 60 s
                # of staleness after a password change through another worker is the price
                "auth_cache_ttl_seconds = 60",
                "",
            ]
        ),
    )
    return TrackingAuth(config_path, TRACKING_ADMIN_USER, password, secret_key)


def start_mlflow_server(
    backend_uri: str, artifacts_dir: Path, port: int, log_path: Path, auth: TrackingAuth
) -> subprocess.Popen:
    """``mlflow server --app-name basic-auth`` on ``backend_uri`` that also serves the artifacts
    (``--serve-artifacts``); the backend URI (it holds a password) goes in the environment, not on the command
    line.
    """
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_BACKEND_STORE_URI=backend_uri,
        **auth.server_env(),
    )
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child keeps the log file open
    process = subprocess.Popen(
        command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_http(f"http://127.0.0.1:{port}/health", process)
    return process


API_SERVER_FLAGS = ("--http", "httptools", "--timeout-keep-alive", "5")
"""uvicorn's flags wherever the API is served (make serve, start_api, the integration tests); README, Serving:
Limits. httptools, not h11: h11 bounds a request's head (--h11-max-incomplete-event-size) but answered
/predict 2-3x slower here. Idle keep-alive connections close after 5 s. No --limit-concurrency: uvicorn never
closes a connection that sends nothing, so that many idle sockets would turn every new request into a 503."""


def start_api(
    env: dict[str, str], workers: int, port: int, log_path: Path, multiproc_dir: Path
) -> subprocess.Popen:
    """``uvicorn app:app --workers N`` with Prometheus multiprocess mode (a fresh metrics folder) and the
    flags of ``make serve`` (:data:`API_SERVER_FLAGS`)."""
    shutil.rmtree(multiproc_dir, ignore_errors=True)
    multiproc_dir.mkdir(parents=True)
    env = dict(env, PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        *API_SERVER_FLAGS,
    ]
    process = subprocess.Popen(
        command,
        cwd=PROJECT_DIR,
        env=env,
        stdout=open(log_path, "ab"),  # noqa: SIM115 - the child keeps the log file open
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/health", process)
    return process


def stop_process(pid_file: Path) -> None:
    """SIGTERM the process group recorded in ``pid_file`` and wait for it to go."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
