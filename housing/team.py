"""The team setup on one machine, without Docker: PostgreSQL from the system's packages, an MLflow tracking
server on it that also serves the artifacts, and the API with several worker processes.

    python -m housing.team up [--workers 2]    # start everything; writes .team/env with the URLs
    python -m housing.team env                 # print the exports for the other stages
    python -m housing.team status | down

Every stage then runs unchanged with ``MLFLOW_TRACKING_URI=http://127.0.0.1:5000`` and
``HOUSING_PREDICTION_LOG_URL=postgresql+psycopg://...`` (``eval "$(python -m housing.team env)"``).
The tests use the same functions to run the integration tests against PostgreSQL and a tracking server.
"""

from __future__ import annotations

import argparse
import glob
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

from housing.config import PROJECT_DIR
from housing.errors import UserError

TEAM_DIR = PROJECT_DIR / ".team"
POSTGRES_USER = "housing"


def postgres_bin_dir() -> Path:
    """The PostgreSQL server binaries (Debian: /usr/lib/postgresql/<version>/bin)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise UserError("PostgreSQL is not installed: apt-get install postgresql (the server binaries, initdb and pg_ctl)")


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the system's postgres user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def _chown_for_server(*paths: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in paths:
            for root, dirs, files in os.walk(path):
                for name in [root, *(Path(root) / d for d in dirs), *(Path(root) / f for f in files)]:
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
    from sqlalchemy import create_engine, text

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
    from sqlalchemy.engine import make_url

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


# --- the command line ---------------------------------------------------------------------------------
def team_env(pg_port: int, mlflow_port: int) -> dict[str, str]:
    postgres = Postgres(TEAM_DIR / "pgdata", pg_port)
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "HOUSING_PREDICTION_LOG_URL": postgres.url("predictions")}


def up(args: argparse.Namespace) -> None:
    TEAM_DIR.mkdir(exist_ok=True)
    postgres = Postgres(TEAM_DIR / "pgdata", args.pg_port).start()
    print(f"PostgreSQL on 127.0.0.1:{args.pg_port} (data in {postgres.data_dir})")
    for name in ("mlflow", "predictions"):
        create_database(postgres.admin_url, name)
    env = team_env(args.pg_port, args.mlflow_port)
    if not (TEAM_DIR / "mlflow.pid").exists():
        server = start_mlflow_server(postgres.url("mlflow"), TEAM_DIR / "mlartifacts", args.mlflow_port, TEAM_DIR / "mlflow.log")
        (TEAM_DIR / "mlflow.pid").write_text(str(server.pid))
    print(f"MLflow tracking server on {env['MLFLOW_TRACKING_URI']} (backend PostgreSQL, artifacts served from {TEAM_DIR / 'mlartifacts'})")
    (TEAM_DIR / "env").write_text("".join(f"export {key}={value}\n" for key, value in env.items()))
    if not args.no_api and not (TEAM_DIR / "api.pid").exists():
        api = start_api({**os.environ, **env}, args.workers, args.api_port, TEAM_DIR / "api.log", TEAM_DIR / "prometheus")
        (TEAM_DIR / "api.pid").write_text(str(api.pid))
        print(f"API on http://127.0.0.1:{args.api_port} with {args.workers} workers (log {TEAM_DIR / 'api.log'})")
    print(f"\nfor the other stages:  eval \"$(python -m housing.team env)\"   (or: source {TEAM_DIR / 'env'})")


def down(args: argparse.Namespace) -> None:
    stop_process(TEAM_DIR / "api.pid")
    stop_process(TEAM_DIR / "mlflow.pid")
    Postgres(TEAM_DIR / "pgdata", args.pg_port).stop()
    print("team setup stopped (data kept in .team/; delete the folder to start from scratch)")


def status(args: argparse.Namespace) -> None:
    env = team_env(args.pg_port, args.mlflow_port)
    checks = {"PostgreSQL": Postgres(TEAM_DIR / "pgdata", args.pg_port).running() if (TEAM_DIR / "pgdata").exists() else False}
    for name, url in (("MLflow", f"{env['MLFLOW_TRACKING_URI']}/health"), ("API", f"http://127.0.0.1:{args.api_port}/ready")):
        try:
            checks[name] = httpx.get(url, timeout=3).status_code == 200
        except httpx.HTTPError:
            checks[name] = False
    for name, ok in checks.items():
        print(f"{name:<11} {'up' if ok else 'down'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "env", "status"])
    parser.add_argument("--workers", type=int, default=2, help="API worker processes [default 2]")
    parser.add_argument("--pg-port", type=int, default=5433)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--no-api", action="store_true", help="Start PostgreSQL and MLflow only.")
    args = parser.parse_args()
    try:
        if args.command == "env":
            print("".join(f"export {key}={value}\n" for key, value in team_env(args.pg_port, args.mlflow_port).items()), end="")
        else:
            {"up": up, "down": down, "status": status}[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except subprocess.CalledProcessError as error:
        output = (error.stderr or b"").decode(errors="replace").strip().splitlines()
        print(f"error: {' '.join(error.cmd[:3])} failed: {output[-1] if output else error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
