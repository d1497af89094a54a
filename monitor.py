"""Stage 6: watch the served traffic, decide whether to retrain, and retrain through promote's gate.

Reads the newest --window predictions the production version served in the last HOUSING_MONITOR_WINDOW_HOURS
(or the last --since-minutes) from the prediction log, no client making up more than
HOUSING_MONITOR_CLIENT_SHARE of them while others sent traffic too, compares them with the data that version
was trained on (Evidently: drift on the 8 features and the prediction; RMSE / R2 / MAE on the labelled part),
and judges with the thresholds from the settings: something is wrong when more than --drift-share-threshold of
the features drifted, or RMSE is above --rmse-threshold, or R2 below --r2-threshold (the last two need labels;
the defaults are in the option list below). It retrains only with evidence: at least --monitor-min-labels
labelled districts no model has learnt from; otherwise it alerts and says how many more are needed. Reports go
to artifacts/reports/ (timestamped and *_latest) and every decision is an MLflow run in the "monitoring"
experiment. A retrain holds the retrain lock (a second monitor says so and does not retrain), trains on what
production learnt from plus the new labels, and only promote's gate, with evidence beyond noise, can move
`production`; the API picks the new version up by itself. While a challenger is in shadow (`staging` names
another version than `production`), every run also judges it on the labelled requests both models scored
(promote.py --from-shadow does the same by hand) and promotes or drops it; with HOUSING_PROMOTION_MODE=shadow
a retrained winner becomes that challenger instead of replacing production at once.

Exit codes: 0 decided (and retrained if needed, or another process was retraining), 1 the retrain failed
(production untouched), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from datetime import UTC, datetime, timedelta

from housing import cli
from housing.config.settings import Settings
from housing.errors import UserError
from housing.monitoring.price_moves import approve_price_step
from housing.monitoring.round import MonitorOutcome, RetrainFailed, run_monitor

logger = logging.getLogger("monitor")
EXIT_RETRAIN_FAILED = 1


def report(outcome: MonitorOutcome, settings: Settings) -> None:
    """Print what the round measured, decided and (if it retrained) what promotion did."""
    figures, decision = outcome.figures, outcome.decision
    evidence = outcome.evidence
    print(
        f"window: {figures.window_rows:,} predictions served by production version"
        f" {outcome.production_version}, {figures.labelled_rows:,} labelled"
    )
    print(
        f"evidence: {evidence.districts:,} labelled districts no model has learnt from "
        f"({evidence.already_used:,} labelled rows already used, {evidence.repeats:,} repeats of a district)"
    )
    scores = ", ".join(
        f"{name} {score:.3f}{'*' if figures.drifted.get(name) else ''}"
        for name, score in figures.drift_scores.items()
    )
    print(f"drift ({figures.drift_method}, threshold {settings.drift_threshold}; * = drifted): {scores}")
    print(f"drifted features: {figures.drift_share:.0%} ({', '.join(figures.drifted_features) or 'none'})")
    if figures.rmse is not None:
        print(
            f"labelled traffic: RMSE {figures.rmse:.4f}, R2 {figures.r2:.4f}, MAE {figures.mae:.4f}"
            f" (reference on {outcome.error_reference}: RMSE {figures.reference_rmse:.4f}, R2"
            f" {figures.reference_r2:.4f})"
        )
    estimate = outcome.estimate
    if estimate is not None:
        overall = estimate.overall
        print(
            f"estimated without labels ({overall.rows:,} {estimate.over} predictions): RMSE"
            f" {overall.rmse:.4f} ({overall.confidence:.0%} interval"
            f" {overall.rmse_low:.4f}-{overall.rmse_high:.4f}), MAE {overall.mae:.4f}"
        )
        for name, segment in estimate.by_segment.items():
            print(
                f"  {name}: RMSE {segment.rmse:.4f} ({segment.rmse_low:.4f}-{segment.rmse_high:.4f}) on"
                f" {segment.rows:,}"
            )
        if estimate.calibration is not None:
            calibration = estimate.calibration
            gap = "n/a" if calibration["relative_gap"] is None else f"{calibration['relative_gap']:+.1%}"
            print(
                f"  calibration on {calibration['rows']:,} labelled predictions: estimated RMSE"
                f" {calibration['estimated_rmse']:.4f}, "
                f"realized {calibration['realized_rmse']:.4f} (gap {gap}"
                f"{', inside the interval' if calibration['inside_interval'] else ', outside the interval'})"
            )
    coverage = outcome.coverage.overall if outcome.coverage is not None else None
    if outcome.coverage is not None and coverage is not None:
        print(
            f"prediction interval ({outcome.coverage.level:.0%}): held {coverage.coverage:.1%} of"
            f" {coverage.rows:,} labelled predictions ({coverage.low:.1%}-{coverage.high:.1%}), mean width"
            f" {coverage.mean_width:.3f}"
        )
    print(f"decision: {decision.action.upper()}")
    for reason in decision.reasons:
        print(f"  because {reason}")
    for note in decision.notes:
        print(f"  note: {note}")
    if outcome.challenger is not None and outcome.challenger.verdict.action != "none":
        print(f"challenger: {outcome.challenger.verdict.message}")
    if outcome.not_retrained is not None:
        print(f"not retrained: {outcome.not_retrained}")
    if outcome.pruned is not None and outcome.pruned.predictions:
        print(
            f"retention: deleted {outcome.pruned.predictions:,} prediction(s) and {outcome.pruned.labels:,}"
            f" label(s) older than {settings.log_retention_days:g} days (every row a retrain used is kept)"
        )
    if outcome.saved is not None:
        print(
            f"report: {outcome.saved.html_path} (latest:"
            f" {outcome.saved.html_path.with_name('monitor_latest.html')})"
        )
    if outcome.retrained is not None:
        promotion = outcome.retrained.promotion
        print(
            f"retrained: training run {outcome.retrained.training.parent_run_id}, data in"
            f" {outcome.retrained.data_dir}"
        )
        for message in promotion.messages:
            print(f"  {message}")
        print(
            f"  production moved to version {promotion.production_after}"
            if promotion.production_changed
            else "  production stays where it was"
        )


def monitor_once(args: argparse.Namespace, settings: Settings) -> int:
    """One monitoring round; its exit code (0 decided, 1 the retrain failed)."""
    since = None
    if args.since_minutes is not None:
        since = datetime.now(UTC) - timedelta(hours=settings.monitor_window_hours)
    try:
        outcome = run_monitor(settings, since=since, dry_run=args.dry_run)
    except RetrainFailed as error:
        logger.debug("retraining failed", exc_info=True)
        print(
            f"error: the decision was to retrain and retraining failed, production is unchanged ({error})",
            file=sys.stderr,
        )
        return EXIT_RETRAIN_FAILED
    report(outcome, settings)
    return 0


def main(args: argparse.Namespace) -> int:
    """One round, or with --watch a round every SECONDS until SIGINT or SIGTERM; a stop request ends the
    watch after the round in progress (a second Ctrl-C stops at once)."""
    if args.since_minutes is not None:  # the window setting in minutes: Settings checks it like the others
        args.monitor_window_hours = args.since_minutes / 60
    settings = cli.settings_from_args(args)
    if args.watch is not None and not (math.isfinite(args.watch) and args.watch > 0):
        raise UserError(f"--watch takes a positive number of seconds between rounds, not {args.watch}")
    if args.approve_price_step is not None:
        print(approve_price_step(settings, args.approve_price_step))
        return 0
    if args.watch is None:
        return monitor_once(args, settings)
    with cli.StopRequest() as stop:
        while True:  # --watch: a watcher reports failures and keeps watching
            try:
                code = monitor_once(args, settings)
                if code:
                    logger.error("this round failed (exit %d); next round in %s s", code, args.watch)
            except Exception as error:  # noqa: BLE001
                logger.error("this round failed: %s; next round in %s s", error, args.watch)
            if stop.wait(args.watch):
                return stop.exit_code()


def build_parser() -> argparse.ArgumentParser:
    """The command line: window, dry run, watch interval and the monitor's settings."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    window = Settings.model_fields["monitor_window"]
    parser.add_argument(
        "--window",
        dest="monitor_window",
        type=int,
        default=None,
        metavar="N",
        help=f"{window.description} [env HOUSING_MONITOR_WINDOW; default {window.default}]",
    )
    parser.add_argument(
        "--since-minutes",
        type=float,
        default=None,
        metavar="M",
        help="Monitor the predictions of the last M minutes instead of the last N.",
    )
    parser.add_argument("--dry-run", action="store_true", help="Decide and record, but don't retrain.")
    parser.add_argument(
        "--watch", type=float, default=None, metavar="SECONDS", help="Repeat every SECONDS until interrupted."
    )
    parser.add_argument(
        "--approve-price-step",
        type=float,
        default=None,
        metavar="STEP",
        help=(
            "Approve, as a person who checked the market, retrains of the current production version that"
            " re-price old labels by up to STEP (an ALERT names the step); recorded in the ledger, then exit."
        ),
    )
    cli.add_setting_flags(
        parser,
        "monitor_min_window",
        "monitor_min_labels",
        "drift_share_threshold",
        "rmse_threshold",
        "r2_threshold",
        "prediction_log_url",
        "artifacts_dir",
        "tracking_uri",
    )
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
