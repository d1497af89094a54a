"""The team setup on one machine, without Docker: PostgreSQL from the system's packages (password
authentication), an MLflow tracking server on it with basic authentication that also serves the artifacts,
and the API with several worker processes.

    python -m localteam up [--workers 2]    # start everything; writes .team/env (0600) with URLs and
    credentials python -m localteam env                 # print the exports for the other stages (they hold
    the passwords) python -m localteam status | down

Every stage then runs unchanged with ``MLFLOW_TRACKING_URI=http://127.0.0.1:5000``, MLflow's
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` and
``HOUSING_PREDICTION_LOG_URL=postgresql+psycopg://...`` (``eval "$(python -m localteam env)"``). The passwords
are generated on the first ``up`` and kept in ``.team/secrets/`` (0700, files 0600). The tests use the same
functions to run the integration tests against PostgreSQL and a tracking server.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import httpx

from housing.errors import UserError
from localteam.services import (
    TEAM_DIR,
    Postgres,
    TrackingAuth,
    create_database,
    read_or_create_secret,
    start_api,
    start_mlflow_server,
    stop_process,
    write_private_file,
    write_tracking_auth,
)

SECRETS_DIR = TEAM_DIR / "secrets"
"""The team setup's generated secrets, owner-only: the folder 0700, each file 0600."""
ENV_PATH = TEAM_DIR / "env"
"""The exports ``up`` writes (0600: they hold the passwords) and ``env`` prints."""


# --- the command line ---------------------------------------------------------------------------------
def team_postgres(pg_port: int) -> Postgres:
    """The team's cluster with its password; a cluster without one (an earlier version's) is refused."""
    data_dir = TEAM_DIR / "pgdata"
    password_path = SECRETS_DIR / "postgres_password"
    if (data_dir / "PG_VERSION").exists() and not password_path.exists():
        raise UserError(
            f"{data_dir} was created by an earlier version without passwords: stop it (python -m localteam"
            f" down) and delete {TEAM_DIR} to recreate it"
        )
    return Postgres(data_dir, pg_port, read_or_create_secret(password_path))


def team_auth(postgres: Postgres) -> TrackingAuth:
    """The tracking server's basic-auth config (auth database ``mlflow_auth`` on the team's cluster)."""
    return write_tracking_auth(
        SECRETS_DIR / "mlflow_auth.ini",
        postgres.url("mlflow_auth"),
        read_or_create_secret(SECRETS_DIR / "mlflow_admin_password"),
        read_or_create_secret(SECRETS_DIR / "mlflow_flask_secret_key"),
    )


def team_env(postgres: Postgres, auth: TrackingAuth, mlflow_port: int) -> dict[str, str]:
    """What a shell needs to run the stages against the team setup (passwords included)."""
    return {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        **auth.client_env(),
        "HOUSING_PREDICTION_LOG_URL": postgres.url("predictions"),
    }


def up(args: argparse.Namespace) -> None:
    TEAM_DIR.mkdir(exist_ok=True)
    postgres = team_postgres(args.pg_port).start()
    print(
        f"PostgreSQL on 127.0.0.1:{args.pg_port} with password authentication (data in {postgres.data_dir})"
    )
    for name in ("mlflow", "mlflow_auth", "predictions"):
        create_database(postgres.admin_url, name)
    auth = team_auth(postgres)
    env = team_env(postgres, auth, args.mlflow_port)
    if not (TEAM_DIR / "mlflow.pid").exists():
        server = start_mlflow_server(
            postgres.url("mlflow"), TEAM_DIR / "mlartifacts", args.mlflow_port, TEAM_DIR / "mlflow.log", auth
        )
        (TEAM_DIR / "mlflow.pid").write_text(str(server.pid))
    print(
        f"MLflow tracking server on {env['MLFLOW_TRACKING_URI']} with basic authentication, user"
        f" {auth.username} (backend PostgreSQL, artifacts served from {TEAM_DIR / 'mlartifacts'})"
    )
    write_private_file(
        ENV_PATH, "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())
    )
    if not args.no_api and not (TEAM_DIR / "api.pid").exists():
        api = start_api(
            {**os.environ, **env}, args.workers, args.api_port, TEAM_DIR / "api.log", TEAM_DIR / "prometheus"
        )
        (TEAM_DIR / "api.pid").write_text(str(api.pid))
        print(
            f"API on http://127.0.0.1:{args.api_port} with {args.workers} workers (log"
            f" {TEAM_DIR / 'api.log'})"
        )
    print(f'\nfor the other stages:  eval "$(python -m localteam env)"   (or: source {ENV_PATH})')


def print_env() -> None:
    """Print the exports ``up`` wrote (with the ports it was given)."""
    if not ENV_PATH.exists():
        raise UserError(f"{ENV_PATH} does not exist: start the team setup first (python -m localteam up)")
    print(ENV_PATH.read_text(), end="")


def down(args: argparse.Namespace) -> None:
    stop_process(TEAM_DIR / "api.pid")
    stop_process(TEAM_DIR / "mlflow.pid")
    Postgres(TEAM_DIR / "pgdata", args.pg_port).stop()
    print("team setup stopped (data and secrets kept in .team/; delete the folder to start from scratch)")


def status(args: argparse.Namespace) -> None:
    checks = {
        "PostgreSQL": (
            Postgres(TEAM_DIR / "pgdata", args.pg_port).running() if (TEAM_DIR / "pgdata").exists() else False
        )
    }
    for name, url in (
        ("MLflow", f"http://127.0.0.1:{args.mlflow_port}/health"),
        ("API", f"http://127.0.0.1:{args.api_port}/ready"),
    ):
        try:
            checks[name] = httpx.get(url, timeout=3).status_code == 200
        except httpx.HTTPError:
            checks[name] = False
    for name, ok in checks.items():
        print(f"{name:<11} {'up' if ok else 'down'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "env", "status"])
    parser.add_argument("--workers", type=int, default=2, help="API worker processes [default 2]")
    parser.add_argument("--pg-port", type=int, default=5433)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--no-api", action="store_true", help="Start PostgreSQL and MLflow only.")
    args = parser.parse_args()
    try:
        if args.command == "env":
            print_env()
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
