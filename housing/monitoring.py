"""The monitor's orchestration: logged traffic against the training reference, a retrain decision, its record.

The current window is read from the prediction log (the last N served predictions, or those since a
time), never simulated here. :mod:`housing.drift_report` measures it against the training split with the
production model's predictions (Evidently 0.7), :mod:`housing.retrain_policy` decides, and this module
records the decision (reports on disk, one MLflow run in the monitoring experiment) and, when the decision
is to retrain, retrains through promote's gate (:mod:`housing.retraining`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard

import mlflow
import pandas as pd

from housing import tracking
from housing.config import Settings
from housing.data import Split, load_split, read_manifest
from housing.drift_report import SavedReport, WindowFigures, evaluate_window, reference_frame, save_report
from housing.errors import first_line
from housing.prediction_log import make_engine, read_window
from housing.registry import load_model
from housing.retrain_policy import Decision, RetrainThresholds, decide
from housing.retraining import RetrainOutcome, retrain
from housing.schema import TARGET

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
    retrained: RetrainOutcome | None = None
    """The RetrainOutcome when the monitor retrained."""


def decision_record(figures: WindowFigures, decision: Decision, when: datetime) -> dict[str, Any]:
    """The decision, its reasons and every figure, as saved and logged."""
    return {
        "at": when.isoformat(timespec="seconds"),
        "decision": decision.action,
        "reasons": decision.reasons,
        "notes": decision.notes,
        "drift_share": figures.drift_share,
        "drifted_features": figures.drifted_features,
        **{key: value for key, value in asdict(figures).items() if key not in ("drifted",)},
    }


def finite(value: float | None) -> TypeGuard[float]:
    """Whether a figure is a real number (MLflow rejects None, NaN and infinities as metrics)."""
    return value is not None and math.isfinite(value)


def monitoring_metrics(figures: WindowFigures, decision: Decision) -> dict[str, float]:
    """The figures of one round as MLflow metrics (missing or non-finite ones left out)."""
    quality = {"rmse": figures.rmse, "r2": figures.r2, "mae": figures.mae, "reference_rmse": figures.reference_rmse,
               "reference_r2": figures.reference_r2, "reference_mae": figures.reference_mae}
    return {
        "window_rows": figures.window_rows,
        "labelled_rows": figures.labelled_rows,
        "drift_share": figures.drift_share,
        "drifted_features": len(figures.drifted_features),
        "retrain": 1.0 if decision.retrain else 0.0,
        **{f"drift_score_{name}": score for name, score in figures.drift_scores.items() if finite(score)},
        **{name: value for name, value in quality.items() if finite(value)},
    }


def log_monitoring_run(settings: Settings, figures: WindowFigures, decision: Decision, saved: SavedReport | None,
                       extra_tags: dict[str, str] | None = None) -> str:
    """One MLflow run in the monitoring experiment, so the trend shows in the MLflow UI."""
    client = tracking.connect(settings)
    experiment_id = tracking.ensure_experiment(client, settings.monitoring_experiment_name, settings.mlflow_artifact_location)
    tags = {"decision": decision.action, "reasons": "; ".join(decision.reasons)[:4000] or "-", **(extra_tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor {datetime.now(UTC):%Y-%m-%d %H:%M:%S}", tags=tags) as run:
        mlflow.log_params({
            "window": settings.monitor_window, "min_window": settings.monitor_min_window, "min_labels": settings.monitor_min_labels,
            "drift_method": settings.drift_method, "drift_threshold": settings.drift_threshold,
            "drift_share_threshold": settings.drift_share_threshold, "rmse_threshold": settings.rmse_threshold,
            "r2_threshold": settings.r2_threshold,
        })
        mlflow.log_metrics(monitoring_metrics(figures, decision))
        if saved is not None:
            for path in (saved.html_path, saved.json_path, saved.decision_path):
                mlflow.log_artifact(str(path), artifact_path="report")
    return run.info.run_id


def read_current_window(settings: Settings, since: datetime | None) -> pd.DataFrame:
    """The logged predictions to judge: those since ``since``, else the last ``monitor_window``."""
    engine = make_engine(settings.prediction_log)
    try:
        return read_window(engine, last_n=settings.monitor_window if since is None else None, since=since)
    finally:
        engine.dispose()


def production_reference(settings: Settings, split: Split) -> pd.DataFrame:
    """The training split with the current production model's predictions on it."""
    tracking.connect(settings)
    production = load_model(f"models:/{settings.model_name}@{settings.production_alias}", settings.tracking_uri)
    return reference_frame(split.x_train, split.y_train, production)


def retrain_from_window(settings: Settings, split: Split, current: pd.DataFrame, monitoring_run_id: str) -> RetrainOutcome:
    """Retrain on the window's labelled rows and tag the monitoring run with the outcome.

    A failure is tagged on the run and raised as :class:`RetrainFailed`; production is untouched then,
    because only promote moves the alias, last.
    """
    labelled = current[current[TARGET.name].notna()]
    try:
        outcome = retrain(settings, split, labelled, base_source=read_manifest(settings.manifest_path).source)
    except Exception as error:
        tracking.connect(settings).set_tag(monitoring_run_id, "retrain_failed", f"{type(error).__name__}: {error}"[:4000])
        raise RetrainFailed(f"{type(error).__name__}: {first_line(error)}") from error
    promotion = outcome.promotion
    client = tracking.connect(settings)
    client.set_tag(monitoring_run_id, "retrain_training_run_id", outcome.training.parent_run_id)
    client.set_tag(monitoring_run_id, "promoted_version", promotion.production_after if promotion.production_changed else "none")
    return outcome


def run_monitor(settings: Settings, *, since: datetime | None = None, dry_run: bool = False) -> MonitorOutcome:
    """Read the window, compare it with the reference, decide, record the decision, retrain if needed.

    A retrain that fails raises :class:`RetrainFailed`; production is untouched because only promote
    moves the alias, last.
    """
    current = read_current_window(settings, since)
    split = load_split(settings.split_dir)
    reference = production_reference(settings, split)
    when = datetime.now(UTC)
    snapshot, figures = evaluate_window(reference, current, settings)
    decision = decide(figures, RetrainThresholds.from_settings(settings))
    saved = save_report(snapshot, decision_record(figures, decision, when), settings.reports_dir, when) if snapshot is not None else None
    if dry_run and decision.retrain:
        decision.notes.append("--dry-run: not retraining")
    run_id = log_monitoring_run(settings, figures, decision, saved, {"dry_run": str(dry_run).lower()})
    outcome = MonitorOutcome(figures, decision, saved, run_id)
    if decision.retrain and not dry_run:
        outcome.retrained = retrain_from_window(settings, split, current, run_id)
    return outcome
