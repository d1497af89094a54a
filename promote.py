"""Stage 4: gate the latest training run's candidates into the `staging` and `production` aliases.

Every candidate is scored from its registered model on the test split. Candidates with R2 above the
staging gate are tagged staging_gate=passed and the best of them holds the alias `staging`. The best
candidate above the production gate gets the alias `production` only if it beats the current production
version on the same data; otherwise production stays where it is and this says why. Idempotent.
Prints the final status of every version.

One retrain or promotion at a time: promotion holds the `retrain` lock in the prediction log's database;
when another process holds it, this says who and since when, and exits 0 without promoting.

--from-shadow judges the challenger (the version `staging` names, shadow-scored by the API on every request
production answered) against production on the same labelled requests, with the gate's evidence rule: it
promotes the challenger when it is better beyond noise (a ledger entry with the live evidence), drops it
(removes `staging`) when it is worse beyond noise or had no verdict within HOUSING_SHADOW_MAX_WAIT_HOURS, and
otherwise says how many more labelled requests it needs. HOUSING_PROMOTION_MODE=shadow makes the default
promotion put the winner into `staging` for that, instead of moving `production` directly.

--history prints the production ledger (every move of `production`: when, from which version to which,
by which command, why, on what evidence). --rollback moves `production` back to the version before it
per the ledger (itself a ledger entry); it exits 2 when a retrain is in progress or there is nothing to
roll back to.
"""

from __future__ import annotations

import argparse

from housing import cli
from housing.config.settings import Settings
from housing.data.dataset import load_split
from housing.registry import tracking
from housing.registry.ledger import DONE, read_history, summarise_evidence
from housing.registry.live_verdict import judge_challenger
from housing.registry.production import reconcile_ledger, rollback
from housing.registry.promotion import EvaluationData, promote
from housing.store.locks import RETRAIN_LOCK, describe_holder, held_lock
from housing.store.tables import opened_engine


def main(args: argparse.Namespace) -> int:
    """Print the ledger, roll back, or (by default) promote the latest training run's candidates under the
    lock."""
    settings = cli.settings_from_args(args)
    if args.history:
        print_history(settings)
        return 0
    if args.rollback:
        before, after = rollback(tracking.connect(settings), settings, command="promote.py --rollback")
        print(
            f"'{settings.production_alias}' of {settings.model_name} rolled back from version {before} to"
            f" version {after}"
        )
        return 0
    with (
        opened_engine(settings.log_database_url) as engine,
        held_lock(engine, RETRAIN_LOCK, lease_seconds=settings.monitor_lock_seconds) as lock,
    ):
        if lock is None:
            holder = describe_holder(engine, RETRAIN_LOCK) or "another process"
            print(f"another retrain or promotion is running on {holder}; not promoting")
            return 0
        for sentence in reconcile_ledger(tracking.connect(settings), settings, engine, "promote.py"):
            print(f"alias ledger: {sentence}")
        if args.from_shadow:
            outcome = judge_challenger(
                tracking.connect(settings), settings, engine, command="promote.py --from-shadow"
            )
            print(outcome.verdict.message)
        else:
            promote_and_report(settings)
    return 0


def promote_and_report(settings: Settings) -> None:
    """Promote on the test split and print the decisions and every version's status."""
    split = load_split(settings.split_dir)
    client = tracking.connect(settings)
    evaluation = EvaluationData(split.x_test, split.y_test, description="the test split")
    report = promote(client, settings, evaluation)
    for message in report.messages:
        print(message)
    print(
        f"\n{'version':>7}  {'candidate':<24} {'aliases':<20} {'staging gate':<12} {'eval R2':>8}"
        f" {'eval RMSE':>9}  run"
    )
    for row in report.versions:
        print(
            f"{row['version']:>7}  {row['candidate']:<24} {row['aliases']:<20} {row['staging_gate']:<12} "
            f"{row['eval_r2']:>8} {row['eval_rmse']:>9}  {row['training_run']}"
        )


def print_history(settings: Settings) -> None:
    """Print the alias ledger of the model, oldest first, one line per move of production or staging (a move
    that did not happen says so)."""
    with opened_engine(settings.log_database_url) as engine:
        entries = read_history(engine, settings.model_name, alias=None)
    if not entries:
        print(f"the production ledger of {settings.model_name} is empty")
        return
    for entry in entries:
        status = "" if entry.status == DONE else f" ({entry.status})"
        print(
            f"{entry.at:%Y-%m-%d %H:%M:%S} UTC  {entry.alias:<10} {entry.from_version or '-':>4} ->"
            f" {entry.to_version:<4}  {entry.command}{status}  {entry.reason}"
            f"  [{summarise_evidence(entry.evidence)}]"
        )


def build_parser() -> argparse.ArgumentParser:
    """The command line: the promotion gates, where the stores are, and the ledger's --history and
    --rollback."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--history", action="store_true", help="Print the production ledger and exit.")
    action.add_argument(
        "--rollback",
        action="store_true",
        help="Move production back to the version before it (per the ledger) and exit.",
    )
    action.add_argument(
        "--from-shadow",
        action="store_true",
        help=(
            "Promote or drop the challenger (staging) from live paired evidence, or say what it still needs."
        ),
    )
    cli.add_setting_flags(
        parser,
        "staging_r2_threshold",
        "production_r2_threshold",
        "artifacts_dir",
        "tracking_uri",
        "prediction_log_url",
        "monitor_lock_seconds",
        "promotion_mode",
        "shadow_max_wait_hours",
    )
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
