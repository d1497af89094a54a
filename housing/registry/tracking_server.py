"""``python -m housing.registry.tracking_server``: the MLflow tracking server a team shares, with MLflow's
basic authentication, serving the artifacts, and its accounts.

Three accounts, each for one role: ``admin`` (created by MLflow on the first start against an empty auth
database; used here only to create the other two), ``writer`` (the pipeline and the monitor: it creates the
experiments and the registered model, so it may change them and move their aliases) and ``reader`` (the API:
every authenticated user may read, ``default_permission = READ``, and nothing more on what the writer owns).

Every secret comes from the environment, never from a command line (the container's entrypoint turns each
``NAME_FILE`` into ``NAME``): ``MLFLOW_BACKEND_STORE_URI`` and ``HOUSING_TRACKING_AUTH_DATABASE_URI`` (with no
password in them: PostgreSQL's driver reads ``PGPASSWORD``), ``HOUSING_TRACKING_ADMIN_PASSWORD``,
``HOUSING_TRACKING_WRITER_PASSWORD``, ``HOUSING_TRACKING_READER_PASSWORD`` and
``MLFLOW_FLASK_SERVER_SECRET_KEY``. The auth configuration holding the admin password is written owner-only
to a private temporary folder and removed when the server stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from housing import cli
from housing.errors import UserError

ADMIN_USER, WRITER_USER, READER_USER = "admin", "writer", "reader"
ACCOUNTS = {WRITER_USER: "HOUSING_TRACKING_WRITER_PASSWORD", READER_USER: "HOUSING_TRACKING_READER_PASSWORD"}
"""The accounts this launcher creates, and the variable each one's password comes from."""
AUTH_CACHE_SECONDS = 60
"""How long a checked password stays valid: without the cache every request pays a password hash (scrypt,
~0.15 s of CPU), and a model download of ~100 files takes a minute under load."""


def required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise UserError(f"{name} is not set (or {name}_FILE names an empty file)")
    return value


def auth_config(database_uri: str, admin_password: str) -> str:
    """The ``[mlflow]`` section of MLflow's basic-auth configuration: every authenticated user may read, what
    a user creates is theirs to change."""
    return "\n".join(
        [
            "[mlflow]",
            "default_permission = READ",
            f"database_uri = {database_uri}",
            f"admin_username = {ADMIN_USER}",
            f"admin_password = {admin_password}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}",
            "",
        ]
    )


def write_private(folder: Path, name: str, content: str) -> Path:
    """``content`` in ``folder/name``, readable by this user only."""
    path = folder / name
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(content)
    return path


def server_command(args: argparse.Namespace) -> list[str]:
    return [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--serve-artifacts",
        "--artifacts-destination",
        args.artifacts_destination,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
        *(["--allowed-hosts", args.allowed_hosts] if args.allowed_hosts else []),
    ]


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the tracking server exited with code {process.returncode} before it answered")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise UserError(f"the tracking server did not answer {url}/health within {timeout:.0f} s")


def ensure_accounts(url: str, admin_password: str) -> list[str]:
    """Create the writer and reader accounts that do not exist yet (with the admin's credentials); the
    ones created."""
    created = []
    for user, variable in ACCOUNTS.items():
        password = required(variable)
        with httpx.Client(base_url=url, auth=(ADMIN_USER, admin_password), timeout=30) as http:
            found = http.get("/api/2.0/mlflow/users/get", params={"username": user})
            if found.status_code == 200:
                continue
            response = http.post(
                "/api/2.0/mlflow/users/create", json={"username": user, "password": password}
            )
            if response.status_code != 200:
                raise UserError(
                    f"could not create the tracking server's {user} account ({response.status_code})"
                )
            created.append(user)
    return created


def main(args: argparse.Namespace) -> int:
    """Start the server, create the accounts, then serve until SIGTERM or SIGINT (passed on to the server)."""
    required("MLFLOW_BACKEND_STORE_URI")
    admin_password = required("HOUSING_TRACKING_ADMIN_PASSWORD")
    with tempfile.TemporaryDirectory(prefix="housing-tracking-") as private:
        config = write_private(
            Path(private),
            "basic_auth.ini",
            auth_config(required("HOUSING_TRACKING_AUTH_DATABASE_URI"), admin_password),
        )
        Path(args.artifacts_destination).mkdir(parents=True, exist_ok=True)
        env = {
            # MLflow's job runner serves GenAI features this project does not use: without it the server
            # starts no huey consumers (eight processes)
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **os.environ,
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        for variable in ("HOUSING_TRACKING_ADMIN_PASSWORD", *ACCOUNTS.values()):
            env.pop(variable, None)  # the server needs none of them: the admin's is in the config
        process = subprocess.Popen(server_command(args), env=env)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, _frame: process.send_signal(number))
        try:
            local = f"http://127.0.0.1:{args.port}"
            wait_until_up(local, process, args.start_timeout)
            for user in ensure_accounts(local, admin_password):
                print(f"created the tracking server's {user} account", flush=True)
            print(
                f"tracking server on {args.host}:{args.port}, artifacts in {args.artifacts_destination}",
                flush=True,
            )
            return process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(30)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on [default 127.0.0.1]")
    parser.add_argument("--port", type=int, default=5000, help="Port [default 5000]")
    parser.add_argument("--workers", type=int, default=1, help="Server worker processes [default 1]")
    parser.add_argument(
        "--artifacts-destination",
        default="mlartifacts",
        help="Where the served artifacts are kept [default mlartifacts]",
    )
    parser.add_argument(
        "--allowed-hosts",
        default=None,
        help="Host headers the server accepts, comma-separated, wildcards allowed (mlflow,mlflow:*): the "
        "name clients reach it by on a container network; MLflow refuses others with 403 (DNS rebinding). "
        "[default MLflow's: localhost and private addresses]",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        help="Seconds the server may take to answer [default 120]",
    )
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
