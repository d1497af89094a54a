"""``python -m housing.store.provision``: create the prediction log's tables in the prediction-log database,
as the role that owns them (the pipeline's and the monitor's), and grant the role the API connects with what
serving needs and nothing more: reading and inserting rows of the log's two tables (``predictions``,
``feedback``), reading the named labellers' token digests (``labellers``), and moving the intervals' online
state (``interval_state``). That role cannot create or
change a table, nor read the production ledger, the locks or the retraining rows the writer keeps in the same
database.

Run once before the API starts (the compose stack's ``init`` service, a Kubernetes init Job); running it again
changes nothing. The database URL comes from the settings (``HOUSING_PREDICTION_LOG_URL``; PostgreSQL's driver
reads the password from ``PGPASSWORD``).
"""

from __future__ import annotations

import argparse
import re

from sqlalchemy import text

from housing import cli
from housing.errors import UserError
from housing.store.interval_state import ensure_tables as ensure_interval_tables
from housing.store.interval_state import state_table
from housing.store.labellers import ensure_tables as ensure_labeller_tables
from housing.store.labellers import labellers_table
from housing.store.tables import create_tables, feedback_table, opened_engine, predictions_table

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SERVING_PRIVILEGES = "SELECT, INSERT"


def provision(url: str, serving_role: str | None) -> list[str]:
    """Create the log's tables if missing and, on PostgreSQL, grant ``serving_role`` what serving needs:
    reading and inserting the log's rows, reading the labellers' digests, moving the intervals' state; the
    statements of the grants run."""
    if serving_role is not None and not ROLE_NAME.fullmatch(serving_role):
        raise UserError(
            f"{serving_role!r} is not a plain PostgreSQL role name (lower case letters, digits, _)"
        )
    granted: list[str] = []
    with opened_engine(url) as engine:
        create_tables(engine)
        ensure_labeller_tables(engine)
        ensure_interval_tables(engine)
        if serving_role is None:
            return granted
        if engine.dialect.name != "postgresql":
            raise UserError("--grant-to needs a PostgreSQL prediction log: SQLite has no roles")
        with engine.begin() as connection:
            for table, privileges in (
                (predictions_table, SERVING_PRIVILEGES),
                (feedback_table, SERVING_PRIVILEGES),
                (labellers_table, "SELECT"),
                (state_table, "SELECT, INSERT, UPDATE"),
            ):
                statement = f'GRANT {privileges} ON "{table.name}" TO "{serving_role}"'
                connection.execute(text(statement))
                granted.append(statement)
    return granted


def main(args: argparse.Namespace) -> int:
    settings = cli.settings_from_args(args)
    for statement in provision(settings.log_database_url, args.grant_to):
        print(statement)
    print("the prediction log's tables are in place")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--grant-to",
        default=None,
        metavar="ROLE",
        help=(
            "The API's PostgreSQL role: granted SELECT, INSERT on the log's tables, SELECT on the labellers'"
            " digests, SELECT, INSERT, UPDATE on the intervals' state"
        ),
    )
    cli.add_setting_flags(parser, "prediction_log_url", "artifacts_dir")
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
