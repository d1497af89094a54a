"""The team setup on one machine, without Docker: PostgreSQL from the system's packages, an MLflow tracking
server on it that also serves the artifacts, and the API with several worker processes.

    python -m localteam up [--workers 2]    # start everything; writes .team/env with the URLs
    python -m localteam env                 # print the exports for the other stages
    python -m localteam status | down

Every stage then runs unchanged with ``MLFLOW_TRACKING_URI=http://127.0.0.1:5000`` and
``HOUSING_PREDICTION_LOG_URL=postgresql+psycopg://...`` (``eval "$(python -m localteam env)"``).
The tests use the same functions to run the integration tests against PostgreSQL and a tracking server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import httpx

from housing.errors import UserError
from localteam.services import TEAM_DIR, Postgres, create_database, start_api, start_mlflow_server, stop_process


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
    print(f"\nfor the other stages:  eval \"$(python -m localteam env)\"   (or: source {TEAM_DIR / 'env'})")


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
