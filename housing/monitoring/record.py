"""What a monitor round leaves behind: the decision file's record, the MLflow ``monitoring`` run, and the
snapshot in the Evidently workspace."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeGuard

import mlflow
import pandas as pd

from housing.config.settings import Settings
from housing.monitoring.coverage import CoverageFigures
from housing.monitoring.drift_report import (
    SavedReport,
    WindowFigures,
)
from housing.monitoring.evidently_ui import EvidentlyWorkspaceError, MonitorRun, record_snapshot
from housing.monitoring.loss_estimation import (
    WindowEstimate,
)
from housing.monitoring.retrain_policy import Decision
from housing.registry import tracking
from housing.registry.live_verdict import ChallengerOutcome
from housing.store.retrain_evidence import (
    Evidence,
)

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
from housing.monitoring.inputs import MonitorInputs

logger = logging.getLogger(__name__)


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


def coverage_metrics(coverage: CoverageFigures | None) -> dict[str, float]:
    """The prediction interval's coverage on labelled traffic, overall and per segment, as MLflow metrics."""
    if coverage is None or coverage.overall is None:
        return {}
    found = coverage.overall
    metrics = {
        "interval_coverage": found.coverage,
        "interval_coverage_low": found.low,
        "interval_coverage_high": found.high,
        "interval_mean_width": found.mean_width,
        "interval_labelled_rows": float(found.rows),
    }
    metrics.update(
        {f"interval_coverage_{metric_name(name)}": seg.coverage for name, seg in coverage.by_segment.items()}
    )
    return metrics


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
    coverage: CoverageFigures | None = None,
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
                **coverage_metrics(coverage),
            }
        )
        if saved is not None:
            for path in (saved.html_path, saved.json_path, saved.decision_path):
                mlflow.log_artifact(str(path), artifact_path="report")
    return run.info.run_id


def add_to_history(
    settings: Settings,
    snapshot: Snapshot | None,
    inputs: MonitorInputs,
    figures: WindowFigures,
    decision: Decision,
    version: str,
    estimate: WindowEstimate | None = None,
    coverage: CoverageFigures | None = None,
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
                    **(
                        {
                            "interval_coverage": coverage.overall.coverage,
                            "interval_coverage_low": coverage.overall.low,
                            "interval_coverage_high": coverage.overall.high,
                            "interval_level": coverage.level,
                        }
                        if coverage is not None and coverage.overall is not None
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
