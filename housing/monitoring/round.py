"""The monitor's orchestration: the serving model's traffic against its own training data, a decision, its
record.

It judges the model that is serving: the window holds only predictions the current production version
served (the last N, or those since a time; read from the prediction log, never simulated here), and the
drift reference is the data that version was trained on (the training split plus, for a retrained
version, the labelled traffic it learnt from, weighted as it was), so after a retrain on a shift the
same shift is no longer drift. :mod:`housing.monitoring.drift_report` measures (Evidently 0.7),
:mod:`housing.store.retrain_evidence` counts the labelled districts no model has learnt from,
:mod:`housing.monitoring.retrain_policy` decides, and this module records the decision (reports on disk, one
MLflow run in the monitoring experiment) and, on a retrain decision, retrains through promote's gate
(:mod:`housing.monitoring.retraining`) while holding the retrain lock, so two monitors never retrain at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from housing.config.settings import Settings
from housing.data.dataset import read_manifest
from housing.errors import mask_text, masked_first_line
from housing.monitoring.coverage import CoverageFigures, window_coverage
from housing.monitoring.drift_report import (
    PREDICTION,
    SavedReport,
    WindowFigures,
    evaluate_window,
    save_report,
)
from housing.monitoring.inputs import MonitorInputs, current_evidence, read_inputs
from housing.monitoring.loss_estimation import WindowEstimate, estimate_window
from housing.monitoring.price_moves import allowed_price_step, price_move_of
from housing.monitoring.record import add_to_history, decision_record, log_monitoring_run
from housing.monitoring.retrain_policy import Decision, RetrainThresholds, decide
from housing.monitoring.retraining import RetrainOutcome, retrain
from housing.registry import tracking
from housing.registry.live_verdict import ChallengerOutcome, judge_challenger
from housing.registry.production import reconcile_ledger
from housing.schema import TARGET
from housing.store.interval_state import read_state, state_record
from housing.store.locks import RETRAIN_LOCK, describe_holder, held_lock
from housing.store.retention import Pruned, prune_log
from housing.store.retrain_evidence import (
    Evidence,
)
from housing.store.tables import opened_engine

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


class RetrainFailed(Exception):
    """The decision was to retrain and retraining failed; production was not touched."""


@dataclass
class MonitorOutcome:
    """What one monitoring round measured, decided, recorded and (if it retrained) produced."""

    figures: WindowFigures
    decision: Decision
    saved: SavedReport | None
    monitoring_run_id: str | None
    production_version: str
    evidence: Evidence
    retrained: RetrainOutcome | None = None
    """The RetrainOutcome when the monitor retrained."""
    not_retrained: str | None = None
    """Why a retrain decision did not retrain (another process holds the lock, or the evidence was used
    meanwhile)."""
    challenger: ChallengerOutcome | None = None
    """The live verdict on the challenger in shadow (None: another process held the lock)."""
    error_reference: str = ""
    """What the reference error figures were measured on."""
    estimate: WindowEstimate | None = None
    """The error estimated without labels (None: the version has no loss estimator, or the window is
    empty)."""
    pruned: Pruned | None = None
    """What the log's retention deleted after the round (None: a dry run deletes nothing)."""
    coverage: CoverageFigures | None = None
    """The prediction interval's coverage of the window's labelled predictions."""


def retrain_with_evidence(
    settings: Settings, inputs: MonitorInputs, monitoring_run_id: str, max_price_step: float
) -> RetrainOutcome:
    """Retrain on the new evidence plus what production learnt from, and tag the monitoring run with the
    outcome.

    A failure is tagged on the run and raised as :class:`RetrainFailed`; production is untouched then,
    because only promote moves the alias, last.
    """
    try:
        outcome = retrain(
            settings,
            inputs.split,
            inputs.remembered,
            inputs.evidence.rows,
            base_source=read_manifest(settings.manifest_path).source,
            base_index=inputs.price_index,
            max_price_step=max_price_step,
        )
    except Exception as error:
        known = (settings.tracking_uri, settings.log_database_url)
        tracking.connect(settings).set_tag(
            monitoring_run_id, "retrain_failed", mask_text(f"{type(error).__name__}: {error}", *known)[:4000]
        )
        raise RetrainFailed(f"{type(error).__name__}: {masked_first_line(error, *known)}") from error
    promotion = outcome.promotion
    client = tracking.connect(settings)
    client.set_tag(monitoring_run_id, "retrain_training_run_id", outcome.training.parent_run_id)
    client.set_tag(
        monitoring_run_id,
        "promoted_version",
        promotion.production_after if promotion.production_changed else "none",
    )
    return outcome


def retrain_once(settings: Settings, engine: Engine, inputs: MonitorInputs, outcome: MonitorOutcome) -> None:
    """Retrain under the retrain lock, unless another process holds it or used the evidence meanwhile."""
    with held_lock(engine, RETRAIN_LOCK, lease_seconds=settings.monitor_lock_seconds) as lock:
        if lock is None:
            holder = describe_holder(engine, RETRAIN_LOCK) or "another process"
            outcome.not_retrained = (
                f"another retrain or promotion is running ({holder}); this monitor does not retrain"
            )
            return
        inputs.evidence = current_evidence(  # a retrain may have finished meanwhile
            engine, inputs.window, inputs.split, settings.labeller_max_share
        )
        if inputs.evidence.districts < settings.monitor_min_labels:
            outcome.not_retrained = (
                f"a retrain that finished meanwhile used this evidence (now {inputs.evidence.districts:,} new"
                " labelled districts); this monitor does not retrain"
            )
            return
        outcome.retrained = retrain_with_evidence(
            settings,
            inputs,
            outcome.monitoring_run_id or "",
            allowed_price_step(settings, engine, str(inputs.version.version)),
        )


def judge_live(
    settings: Settings, engine: Engine, *, dry_run: bool
) -> tuple[ChallengerOutcome | None, list[str]]:
    """Under the retrain lock: make the alias ledger agree with the registry (what a crash or a hand left),
    then the challenger's live verdict, applied (only reported with ``dry_run``, and the ledger only read).
    The verdict is None when another process holds the lock; the ledger's disagreements as sentences."""
    client = tracking.connect(settings)
    if dry_run:
        return judge_challenger(client, settings, engine, command="monitor.py", apply=False), []
    with held_lock(engine, RETRAIN_LOCK, lease_seconds=settings.monitor_lock_seconds) as lease:
        if lease is None:
            return None, []
        said = reconcile_ledger(client, settings, engine, "monitor.py")
        return judge_challenger(client, settings, engine, command="monitor.py"), said


def decide_round(
    settings: Settings,
    engine: Engine,
    inputs: MonitorInputs,
    figures: WindowFigures,
    estimate: WindowEstimate | None,
    coverage: CoverageFigures,
) -> Decision:
    """The retrain policy's decision on this round's figures, evidence, price move and interval coverage,
    with its notes."""
    allowed = allowed_price_step(settings, engine, str(inputs.version.version))
    decision = decide(
        figures,
        RetrainThresholds.from_settings(settings),
        inputs.evidence.districts,
        estimate.overall if estimate is not None else None,
        price_move_of(inputs.evidence.rows, settings, allowed),
        coverage,
    )
    if inputs.evidence.over_share:
        decision.notes.append(
            f"{inputs.evidence.over_share:,} new labelled districts left out of the evidence: their"
            f" labeller sent more than {settings.labeller_max_share:.0%} of it (HOUSING_LABELLER_MAX_SHARE)"
        )
    if inputs.estimator_note:
        decision.notes.append(inputs.estimator_note)
    return decision


def run_monitor(
    settings: Settings, *, since: datetime | None = None, dry_run: bool = False
) -> MonitorOutcome:
    """Read the window, compare it with the reference, decide, judge the challenger in shadow on live paired
    evidence, record all of it, and retrain if needed (not in a round that promoted the challenger: the next
    round judges the new production on its own traffic).

    A retrain that fails raises :class:`RetrainFailed`; production is untouched because only promote
    moves the alias, last.
    """
    with opened_engine(settings.log_database_url) as engine:
        inputs = read_inputs(settings, engine, since)
        when = datetime.now(UTC)
        snapshot, figures = evaluate_window(
            inputs.reference, inputs.window, settings, {"error_reference": inputs.error_reference}
        )
        estimate = None
        if inputs.loss_estimator is not None:
            estimate = estimate_window(
                inputs.loss_estimator, inputs.window, TARGET.name, PREDICTION, settings.estimation_confidence
            )
        coverage = window_coverage(inputs.window, settings.interval_level)
        decision = decide_round(settings, engine, inputs, figures, estimate, coverage)
        if dry_run and decision.retrain:
            decision.notes.append("--dry-run: not retraining")
        version = str(inputs.version.version)
        challenger, ledger_notes = judge_live(settings, engine, dry_run=dry_run)
        decision.notes += [f"alias ledger: {sentence}" for sentence in ledger_notes]
        history_tags = add_to_history(
            settings, snapshot, inputs, figures, decision, version, estimate, coverage
        )
        record = {
            **decision_record(
                figures,
                decision,
                when,
                production_version=version,
                evidence=inputs.evidence,
                challenger=challenger,
            ),
            "error_reference": inputs.error_reference,
            **(estimate.as_record() if estimate is not None else {}),
            **coverage.as_record(),
            "interval_state": state_record(read_state(engine, version)),
        }
        saved = save_report(snapshot, record, settings.reports_dir, when) if snapshot is not None else None
        run_id = log_monitoring_run(
            settings,
            figures,
            decision,
            inputs.evidence,
            saved,
            {"dry_run": str(dry_run).lower(), "production_version": version, **history_tags},
            estimate,
            coverage,
        )
        outcome = MonitorOutcome(
            figures,
            decision,
            saved,
            run_id,
            version,
            inputs.evidence,
            challenger=challenger,
            error_reference=inputs.error_reference,
            estimate=estimate,
            coverage=coverage,
        )
        promoted = challenger is not None and challenger.applied and challenger.verdict.action == "promote"
        if decision.retrain and promoted:
            outcome.not_retrained = (
                "the challenger was promoted from live evidence this round; the next round judges it on its"
                " own traffic"
            )
        elif decision.retrain and not dry_run:
            retrain_once(settings, engine, inputs, outcome)
        if not dry_run:
            outcome.pruned = prune_log(engine, when - timedelta(days=settings.log_retention_days))
        return outcome
