"""The local team setup's moving parts, without Docker: a private PostgreSQL cluster, an MLflow tracking
server on it that also serves the artifacts, and the API with several worker processes.

Developer tooling, not part of the ``housing`` core package: ``python -m localteam`` (the command line in
``__main__.py``) and the integration tests' PostgreSQL backend use these functions.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from housing.config import PROJECT_DIR
from housing.errors import UserError

TEAM_DIR = PROJECT_DIR / ".team"
"""State of the team setup: the cluster's data, the tracking server's artifacts, logs, pid files."""
POSTGRES_USER = "housing"


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
    raise UserError("PostgreSQL is not installed: apt-get install postgresql, or pip install pgserver (it ships the server binaries)")


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
    user_name = server_user()
    if user_name is not None:
        user = pwd.getpwnam(user_name)
        for path in paths:
            for root, dirs, files in os.walk(path):
                for name in [Path(root), *(Path(root) / d for d in dirs), *(Path(root) / f for f in files)]:
                    os.chown(name, user.pw_uid, user.pw_gid)


@dataclass
class Postgres:
    """A private PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> Postgres:
        bin_dir = postgres_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            _chown_for_server(self.data_dir)
            subprocess.run(
                _as_server_user([str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", POSTGRES_USER, "--auth=trust",
                                 "--encoding=UTF8", "--no-instructions"]),
                check=True, capture_output=True,
            )
        if self.running():
            return self
        log = self.data_dir / "server.log"
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-w", "-t", "60", "-o",
                             f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"]),
            check=True, capture_output=True,
        )
        return self

    def running(self) -> bool:
        result = subprocess.run(_as_server_user([str(postgres_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "status"]),
                                capture_output=True)
        return result.returncode == 0

    def stop(self) -> None:
        if self.data_dir.exists() and self.running():
            subprocess.run(_as_server_user([str(postgres_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
                           capture_output=True)


def create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE ``name`` unless it exists."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}).first()
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


def start_mlflow_server(backend_uri: str, artifacts_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    """``mlflow server`` on ``backend_uri`` that also serves the artifacts (``--serve-artifacts``)."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
        "--artifacts-destination", str(artifacts_dir), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", MLFLOW_DISABLE_TELEMETRY="true")
    process = subprocess.Popen(command, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    wait_http(f"http://127.0.0.1:{port}/health", process)
    return process


def start_api(env: dict[str, str], workers: int, port: int, log_path: Path, multiproc_dir: Path) -> subprocess.Popen:
    """``uvicorn app:app --workers N`` with Prometheus multiprocess mode (a fresh metrics folder)."""
    shutil.rmtree(multiproc_dir, ignore_errors=True)
    multiproc_dir.mkdir(parents=True)
    env = dict(env, PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
    command = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--no-access-log"]
    process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                               start_new_session=True)
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


