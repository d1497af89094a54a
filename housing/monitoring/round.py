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
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeGuard

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from sklearn.pipeline import Pipeline
from sqlalchemy import Engine

from housing.config import Settings
from housing.data.dataset import Split, load_split, read_manifest
from housing.data.digests import row_digests
from housing.errors import UserError, mask_text, masked_first_line
from housing.monitoring.drift_report import (
    PREDICTION,
    SavedReport,
    WindowFigures,
    evaluate_window,
    reference_frame,
    save_report,
)
from housing.monitoring.evidently_ui import EvidentlyWorkspaceError, MonitorRun, record_snapshot
from housing.monitoring.loss_estimation import (
    LossEstimator,
    WindowEstimate,
    estimate_window,
    load_loss_estimator,
)
from housing.monitoring.retrain_policy import Decision, RetrainThresholds, decide
from housing.monitoring.retraining import (
    RetrainOutcome,
    age_weights,
    effective_rows,
    retrain,
    scale_to_share,
    traffic_share,
)
from housing.registry import tracking
from housing.registry.live_verdict import ChallengerOutcome, judge_challenger
from housing.registry.versions import get_version_by_alias, load_version
from housing.schema import FEATURE_NAMES, TARGET
from housing.store.locks import RETRAIN_LOCK, describe_holder, held_lock
from housing.store.prediction_log import read_window
from housing.store.retrain_evidence import (
    EVAL_ROLE,
    Evidence,
    base_districts,
    new_evidence,
    trained_rows,
    used_districts,
)
from housing.store.tables import opened_engine

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

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


def decision_record(
    figures: WindowFigures,
    decision: Decision,
    when: datetime,
    *,
    production_version: str,
    evidence: Evidence,
    challenger: ChallengerOutcome | None = None,
) -> dict[str, Any]:
    """The decision, its reasons and every figure, as saved and logged."""
    return {
        "challenger": challenger.as_dict() if challenger is not None else None,
        "at": when.isoformat(timespec="seconds"),
        "decision": decision.action,
        "reasons": decision.reasons,
        "notes": decision.notes,
        "production_version": production_version,
        "new_labelled_districts": evidence.districts,
        "labelled_rows_already_used": evidence.already_used,
        "evidence_needed": decision.evidence_needed,
        "labels_to_confirm": decision.labels_to_confirm,
        "drift_share": figures.drift_share,
        "drifted_features": figures.drifted_features,
        **{key: value for key, value in asdict(figures).items() if key not in ("drifted",)},
    }


def finite(value: float | None) -> TypeGuard[float]:
    """Whether a figure is a real number (MLflow rejects None, NaN and infinities as metrics)."""
    return value is not None and math.isfinite(value)


def estimate_metrics(estimate: WindowEstimate | None) -> dict[str, float]:
    """The estimated error (overall, per segment) and its calibration as MLflow metrics."""
    if estimate is None:
        return {}
    overall = estimate.overall
    metrics = {
        "estimated_rmse": overall.rmse,
        "estimated_rmse_low": overall.rmse_low,
        "estimated_rmse_high": overall.rmse_high,
        "estimated_mae": overall.mae,
        "estimated_rows": float(overall.rows),
    }
    metrics.update(
        {f"estimated_rmse_{metric_name(name)}": segment.rmse for name, segment in estimate.by_segment.items()}
    )
    if estimate.calibration is not None and estimate.calibration["relative_gap"] is not None:
        metrics.update(
            estimation_gap=estimate.calibration["relative_gap"],
            estimation_calibrated_rows=float(estimate.calibration["rows"]),
        )
    return metrics


def metric_name(segment: str) -> str:
    """A segment's name as an MLflow metric suffix (``region: Bay Area`` -> ``region_bay_area``)."""
    return "".join(char if char.isalnum() else "_" for char in segment.lower()).replace("__", "_").strip("_")


def monitoring_metrics(figures: WindowFigures, decision: Decision, evidence: Evidence) -> dict[str, float]:
    """The figures of one round as MLflow metrics (missing or non-finite ones left out)."""
    quality = {
        "rmse": figures.rmse,
        "r2": figures.r2,
        "mae": figures.mae,
        "reference_rmse": figures.reference_rmse,
        "reference_r2": figures.reference_r2,
        "reference_mae": figures.reference_mae,
    }
    return {
        "window_rows": figures.window_rows,
        "labelled_rows": figures.labelled_rows,
        "drift_share": figures.drift_share,
        "drifted_features": len(figures.drifted_features),
        "retrain": 1.0 if decision.retrain else 0.0,
        "new_labelled_districts": evidence.districts,
        "evidence_needed": decision.evidence_needed,
        "labels_to_confirm": decision.labels_to_confirm,
        **{f"drift_score_{name}": score for name, score in figures.drift_scores.items() if finite(score)},
        **{name: value for name, value in quality.items() if finite(value)},
    }


def log_monitoring_run(
    settings: Settings,
    figures: WindowFigures,
    decision: Decision,
    evidence: Evidence,
    saved: SavedReport | None,
    extra_tags: dict[str, str] | None = None,
    estimate: WindowEstimate | None = None,
) -> str:
    """One MLflow run in the monitoring experiment, so the trend shows in the MLflow UI."""
    client = tracking.connect(settings)
    experiment_id = tracking.ensure_experiment(
        client, settings.monitoring_experiment_name, settings.mlflow_artifact_location
    )
    tags = {
        "decision": decision.action,
        "reasons": "; ".join(decision.reasons)[:4000] or "-",
        "notes": "; ".join(decision.notes)[:4000] or "-",
        **(extra_tags or {}),
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"monitor {datetime.now(UTC):%Y-%m-%d %H:%M:%S}", tags=tags
    ) as run:
        mlflow.log_params(
            {
                "window": settings.monitor_window,
                "min_window": settings.monitor_min_window,
                "min_labels": settings.monitor_min_labels,
                "drift_method": settings.drift_method,
                "drift_threshold": settings.drift_threshold,
                "drift_share_threshold": settings.drift_share_threshold,
                "rmse_threshold": settings.rmse_threshold,
                "r2_threshold": settings.r2_threshold,
            }
        )
        mlflow.log_metrics(
            {
                **monitoring_metrics(figures, decision, evidence),
                **{name: value for name, value in estimate_metrics(estimate).items() if finite(value)},
            }
        )
        if saved is not None:
            for path in (saved.html_path, saved.json_path, saved.decision_path):
                mlflow.log_artifact(str(path), artifact_path="report")
    return run.info.run_id


def serving_version(client: MlflowClient, settings: Settings) -> ModelVersion:
    """The version the production alias names; one sentence when there is none."""
    version = get_version_by_alias(client, settings.model_name, settings.production_alias)
    if version is None:
        raise UserError(
            f"no version of {settings.model_name} has the alias '{settings.production_alias}'; run the"
            " pipeline first"
        )
    return version


@dataclass(frozen=True)
class HeldOut:
    """Labelled rows the serving version never trained on, and what they are (said beside every reference
    error)."""

    x: pd.DataFrame
    y: pd.Series
    description: str


def held_out_data(
    engine: Engine, split: Split, training_run_id: str, remembered: pd.DataFrame, price_index: float
) -> HeldOut:
    """The original model's held-out data is the test split; a retrained version's is its evaluation data: the
    test split at its price index without the districts it trained on, plus the labelled traffic its
    retraining held out.
    """
    held = trained_rows(engine, training_run_id, EVAL_ROLE) if training_run_id else remembered.iloc[0:0]
    if remembered.empty and held.empty:
        return HeldOut(
            split.x_test, split.y_test * price_index, f"held-out: the test split ({len(split.x_test):,} rows)"
        )
    keep = (
        ~row_digests(split.x_test).isin(set(row_digests(remembered)) if len(remembered) else set()).to_numpy()
    )
    x = pd.concat([split.x_test.loc[keep, list(FEATURE_NAMES)], held[list(FEATURE_NAMES)]], ignore_index=True)
    y = pd.concat([split.y_test[keep] * price_index, held[TARGET.name]], ignore_index=True).astype(float)
    return HeldOut(
        x,
        y,
        f"held-out: its evaluation data ({int(keep.sum()):,} test-split rows at price index {price_index:.3f}"
        f" + {len(held):,} labelled traffic rows its retraining held out)",
    )


def production_reference(
    split: Split, remembered: pd.DataFrame, model: Pipeline, settings: Settings, held_out: HeldOut
) -> pd.DataFrame:
    """The reference of the production version: drift against the data it was trained on (the training split,
    plus the labelled traffic a retrained version learnt from, drawn in proportion to the weight it had in
    training); the error against its predictions on ``held_out`` rows
    (housing.monitoring.drift_report.reference_frame).
    """
    if remembered.empty:
        return reference_frame(split.x_train, held_out.x, held_out.y, model)
    raw = age_weights(remembered["created_at"], datetime.now(UTC), settings.retrain_traffic_half_life_days)
    share = traffic_share(
        effective_rows(raw), settings.retrain_traffic_weight, settings.retrain_traffic_ramp_rows
    )
    weights = np.concatenate([np.ones(len(split.x_train)), scale_to_share(raw, share, len(split.x_train))])
    x = pd.concat([split.x_train[list(FEATURE_NAMES)], remembered[list(FEATURE_NAMES)]], ignore_index=True)
    picks = np.random.default_rng(settings.random_state).choice(
        len(x), size=len(split.x_train), p=weights / weights.sum()
    )
    return reference_frame(x.iloc[picks], held_out.x, held_out.y, model)


@dataclass
class MonitorInputs:
    """What one round reads: the serving version, its window, its training data and the evidence."""

    version: ModelVersion
    window: pd.DataFrame
    split: Split
    remembered: pd.DataFrame
    reference: pd.DataFrame
    evidence: Evidence
    price_index: float
    """The price index the serving version was trained with (1.0 for the original model)."""
    error_reference: str = ""
    """What the reference error figures were measured on (held-out rows, said with the figures)."""
    loss_estimator: LossEstimator | None = None
    """The serving version's loss estimator (None: it has none)."""
    estimator_note: str = ""
    """Why there is no estimate, when there is none."""


def read_inputs(settings: Settings, engine: Engine, since: datetime | None) -> MonitorInputs:
    """Read the serving version, the predictions it served, the data it learnt from, and the new evidence."""
    client = tracking.connect(settings)
    version = serving_version(client, settings)
    window = read_window(
        engine,
        last_n=settings.monitor_window if since is None else None,
        since=since,
        model_version=str(version.version),
    )
    split = load_split(settings.split_dir)
    remembered = trained_rows(engine, version.tags.get("training_run_id", ""))
    index = float(client.get_run(version.run_id).data.tags.get("price_index", "1")) if version.run_id else 1.0
    held_out = held_out_data(engine, split, version.tags.get("training_run_id", ""), remembered, index)
    reference = production_reference(split, remembered, load_version(client, version), settings, held_out)
    estimator, note = serving_estimator(client, version)
    return MonitorInputs(
        version,
        window,
        split,
        remembered,
        reference,
        current_evidence(engine, window, split),
        index,
        held_out.description,
        estimator,
        note,
    )


def serving_estimator(client: MlflowClient, version: ModelVersion) -> tuple[LossEstimator | None, str]:
    """The serving version's loss estimator, or None and why (a version trained before loss estimation, or one
    whose estimator does not load safely: the round goes on without an estimate)."""
    try:
        estimator = load_loss_estimator(client, version)
    except UserError as error:
        logger.warning("%s", error)
        return None, str(error)
    if estimator is None:
        return (
            None,
            (
                f"version {version.version} has no loss estimator (trained before loss estimation): no error"
                " estimated without labels"
            ),
        )
    return estimator, ""


def current_evidence(engine: Engine, window: pd.DataFrame, split: Split) -> Evidence:
    """The window's labelled districts that neither the training split nor any retraining run has used."""
    labelled = window[window[TARGET.name].notna()]
    return new_evidence(labelled, used_districts(engine) | base_districts(split.x_train))


def retrain_with_evidence(
    settings: Settings, inputs: MonitorInputs, monitoring_run_id: str
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
        inputs.evidence = current_evidence(
            engine, inputs.window, inputs.split
        )  # a retrain may have finished meanwhile
        if inputs.evidence.districts < settings.monitor_min_labels:
            outcome.not_retrained = (
                f"a retrain that finished meanwhile used this evidence (now {inputs.evidence.districts:,} new"
                " labelled districts); this monitor does not retrain"
            )
            return
        outcome.retrained = retrain_with_evidence(settings, inputs, outcome.monitoring_run_id or "")


def add_to_history(
    settings: Settings,
    snapshot: Snapshot | None,
    inputs: MonitorInputs,
    figures: WindowFigures,
    decision: Decision,
    version: str,
    estimate: WindowEstimate | None = None,
) -> dict[str, str]:
    """Add the round's snapshot to the Evidently workspace (the dashboard of ``make monitor-ui``); the MLflow
    tags that say where it went. A workspace that fails costs a note on the decision, never the round."""
    if snapshot is None:
        return {}
    created = pd.to_datetime(inputs.window["created_at"], utc=True) if len(inputs.window) else None
    try:
        snapshot_id = record_snapshot(
            settings,
            snapshot,
            MonitorRun(
                production_version=version,
                decision=decision.action,
                window_start=created.min().to_pydatetime() if created is not None else None,
                window_end=created.max().to_pydatetime() if created is not None else None,
                figures={
                    "drift_share": figures.drift_share,
                    "labelled_rows": figures.labelled_rows,
                    "window_rows": figures.window_rows,
                    "new_labelled_districts": inputs.evidence.districts,
                    **(
                        {
                            "estimated_rmse": estimate.overall.rmse,
                            "estimated_rmse_low": estimate.overall.rmse_low,
                            "estimated_rmse_high": estimate.overall.rmse_high,
                        }
                        if estimate is not None
                        else {}
                    ),
                },
            ),
        )
    except EvidentlyWorkspaceError as error:
        logger.warning("%s", error)
        decision.notes.append(str(error))
        return {"evidently_snapshot_id": "none"}
    return {"evidently_snapshot_id": snapshot_id}


def judge_live(settings: Settings, engine: Engine, *, dry_run: bool) -> ChallengerOutcome | None:
    """The challenger's live verdict, applied under the retrain lock (only reported with ``dry_run``); None
    when another process holds the lock."""
    client = tracking.connect(settings)
    if dry_run:
        return judge_challenger(client, settings, engine, command="monitor.py", apply=False)
    with held_lock(engine, RETRAIN_LOCK, lease_seconds=settings.monitor_lock_seconds) as lock:
        return None if lock is None else judge_challenger(client, settings, engine, command="monitor.py")


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
        decision = decide(
            figures,
            RetrainThresholds.from_settings(settings),
            inputs.evidence.districts,
            estimate.overall if estimate is not None else None,
        )
        if inputs.estimator_note:
            decision.notes.append(inputs.estimator_note)
        if dry_run and decision.retrain:
            decision.notes.append("--dry-run: not retraining")
        version = str(inputs.version.version)
        challenger = judge_live(settings, engine, dry_run=dry_run)
        history_tags = add_to_history(settings, snapshot, inputs, figures, decision, version, estimate)
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
        )
        promoted = challenger is not None and challenger.applied and challenger.verdict.action == "promote"
        if decision.retrain and promoted:
            outcome.not_retrained = (
                "the challenger was promoted from live evidence this round; the next round judges it on its"
                " own traffic"
            )
        elif decision.retrain and not dry_run:
            retrain_once(settings, engine, inputs, outcome)
        return outcome
