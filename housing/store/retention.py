"""Retention of the prediction log: logged predictions older than ``log_retention_days`` are deleted, with
their labels, except those a retraining run used (its evidence, ``retraining_rows``), which stay as long as
the models that learnt from them may be judged or rolled back to.

Without it nothing ever leaves the log: an open /predict fills the disk at the rate it is called. Each monitor
round runs it (the monitor holds the writer's credentials; the API's may only read and insert), and so does

    python -m housing.store.retention [--older-than-days N]

for a scheduler of its own. Rows go in chunks of :data:`CHUNK_ROWS`, each its own short transaction, so the
API's inserts never wait long behind it.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, select

from housing import cli
from housing.store.retrain_evidence import ensure_tables as ensure_evidence_tables
from housing.store.retrain_evidence import used_rows_table
from housing.store.tables import feedback_table, opened_engine, predictions_table, timestamp_value

logger = logging.getLogger(__name__)

CHUNK_ROWS = 10_000
"""Rows deleted per transaction."""


@dataclass(frozen=True)
class Pruned:
    """What a retention pass deleted."""

    predictions: int
    labels: int
    before: datetime


def prune_log(engine: Engine, older_than: datetime) -> Pruned:
    """Delete the predictions logged before ``older_than`` that no retraining run used, and their labels."""
    ensure_evidence_tables(engine)
    cutoff = timestamp_value(engine, older_than)
    used = select(used_rows_table.c.request_id)
    predictions = labels = 0
    while True:
        chunk = (
            select(predictions_table.c.request_id)
            .where(predictions_table.c.created_at < cutoff, predictions_table.c.request_id.not_in(used))
            .order_by(predictions_table.c.created_at, predictions_table.c.request_id)  # the same chunk twice
            .limit(CHUNK_ROWS)
        )
        with engine.begin() as connection:  # labels first: the same chunk of old predictions selects them
            labels += connection.execute(
                delete(feedback_table).where(feedback_table.c.request_id.in_(chunk))
            ).rowcount
            deleted = connection.execute(
                delete(predictions_table).where(predictions_table.c.request_id.in_(chunk))
            ).rowcount
        predictions += deleted
        if deleted < CHUNK_ROWS:
            break
    if predictions:
        logger.info(
            "prediction log: deleted %d prediction(s) and %d label(s) logged before %s",
            predictions,
            labels,
            f"{older_than:%Y-%m-%d %H:%M} UTC",
        )
    return Pruned(predictions, labels, older_than)


def prune_older_than_days(url: str, days: float) -> Pruned:
    """:func:`prune_log` of what is older than ``days`` days, at ``url``."""
    with opened_engine(url) as engine:
        return prune_log(engine, datetime.now(UTC) - timedelta(days=days))


def main(args: argparse.Namespace) -> int:
    settings = cli.settings_from_args(args)
    pruned = prune_older_than_days(settings.log_database_url, settings.log_retention_days)
    print(
        f"deleted {pruned.predictions:,} prediction(s) and {pruned.labels:,} label(s) logged before"
        f" {pruned.before:%Y-%m-%d %H:%M} UTC (kept: every row a retraining run used)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m housing.store.retention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(  # the setting itself: Settings refuses 0, negatives, inf and nan
        "--older-than-days",
        dest="log_retention_days",
        type=float,
        default=None,
        metavar="DAYS",
        help="Delete what is older than this many days, 0 < DAYS <= 36500 [env HOUSING_LOG_RETENTION_DAYS].",
    )
    cli.add_setting_flags(parser, "prediction_log_url", "artifacts_dir")
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
