"""The monitor: logged traffic against the training reference, a retrain decision, and its record.

The current window is read from the prediction log (the last N served predictions, or those since a
time), never simulated here. Evidently 0.7 computes data drift on the 8 features and the prediction,
and regression quality on the labelled part of the window with the labelled reference beside it. The
decision uses the seed's thresholds from the settings; with too few labels it says so and decides on
drift alone; with too small a window it makes no decision.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from housing.artifacts import atomic_path, save_json
from housing.config import Settings
from housing.errors import first_line
from housing.schema import FEATURE_NAMES, TARGET

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)

PREDICTION = "prediction"
MONITORED_COLUMNS = (*FEATURE_NAMES, PREDICTION)

RETRAIN, NO_ACTION, INSUFFICIENT_DATA = "retrain", "no retrain", "insufficient data"


@dataclass
class WindowFigures:
    """What the report measured on one window."""

    window_rows: int
    labelled_rows: int
    drift_scores: dict[str, float]
    drifted: dict[str, bool]
    drift_method: str
    rmse: float | None = None
    r2: float | None = None
    mae: float | None = None
    reference_rmse: float | None = None
    reference_r2: float | None = None
    reference_mae: float | None = None

    @property
    def drifted_features(self) -> list[str]:
        return [name for name in FEATURE_NAMES if self.drifted.get(name)]

    @property
    def drift_share(self) -> float:
        return len(self.drifted_features) / len(FEATURE_NAMES)

    @property
    def prediction_drifted(self) -> bool:
        return bool(self.drifted.get(PREDICTION))


@dataclass
class Decision:
    """The monitor's verdict, its reasons, and notes on what it could not judge."""

    action: str
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def retrain(self) -> bool:
        return self.action == RETRAIN


def decide(figures: WindowFigures, settings: Settings) -> Decision:
    """Apply the thresholds: drift share, and RMSE / R2 when there are enough labels."""
    if figures.window_rows < settings.monitor_min_window:
        return Decision(INSUFFICIENT_DATA, notes=[
            f"only {figures.window_rows:,} logged predictions in the window; {settings.monitor_min_window:,} are needed "
            "before a decision (small windows raise false alarms)"])
    reasons, notes = [], []
    if figures.drift_share > settings.drift_share_threshold:
        reasons.append(f"{figures.drift_share:.0%} of the features drifted ({', '.join(figures.drifted_features)}), "
                       f"above {settings.drift_share_threshold:.0%}")
    if figures.prediction_drifted:
        notes.append(f"the prediction's distribution drifted (score {figures.drift_scores.get(PREDICTION, float('nan')):.3f})")
    if figures.labelled_rows < settings.monitor_min_labels:
        notes.append(f"only {figures.labelled_rows:,} labelled predictions (fewer than {settings.monitor_min_labels:,}): "
                     "error not judged, decision on drift alone")
    else:
        if figures.rmse is not None and figures.rmse > settings.rmse_threshold:
            reasons.append(f"RMSE {figures.rmse:.3f} on {figures.labelled_rows:,} labelled predictions is above {settings.rmse_threshold}")
        if figures.r2 is not None and figures.r2 < settings.r2_threshold:
            reasons.append(f"R2 {figures.r2:.3f} on {figures.labelled_rows:,} labelled predictions is below {settings.r2_threshold}")
    return Decision(RETRAIN if reasons else NO_ACTION, reasons, notes)


# --- data ----------------------------------------------------------------------------------------------
def reference_frame(x_train: pd.DataFrame, y_train: pd.Series, model: Pipeline) -> pd.DataFrame:
    """The training split with its targets and the production model's predictions on it."""
    frame = x_train.loc[:, list(FEATURE_NAMES)].reset_index(drop=True)
    frame[TARGET.name] = y_train.to_numpy()
    frame[PREDICTION] = model.predict(x_train.loc[:, list(FEATURE_NAMES)])
    return frame


# --- the Evidently report ------------------------------------------------------------------------------
def evaluate_window(reference: pd.DataFrame, current: pd.DataFrame, settings: Settings) -> tuple[Any, WindowFigures]:
    """One Evidently 0.7 report: drift of the 8 features and the prediction, then regression quality.

    The drift metrics come first on purpose: Evidently's regression metrics drop the unlabelled rows
    from the current dataset in place, and drift must be measured on the whole window.
    """
    labelled = int(current[TARGET.name].notna().sum()) if len(current) else 0
    if len(current) == 0:
        return None, WindowFigures(0, 0, {}, {}, settings.drift_method)
    with _quiet_third_party_warnings():
        from evidently import DataDefinition, Dataset, Regression, Report
        from evidently.core.report import ReferenceMetricNotFound
        from evidently.metrics import MAE, RMSE, R2Score, ValueDrift
        from evidently.presets import DataDriftPreset

    columns = [*FEATURE_NAMES, TARGET.name, PREDICTION]
    definition = DataDefinition(numerical_columns=columns, regression=[Regression(target=TARGET.name, prediction=PREDICTION)])
    metrics: list[Any] = [
        DataDriftPreset(columns=list(FEATURE_NAMES), num_method=settings.drift_method, num_threshold=settings.drift_threshold),
        ValueDrift(column=PREDICTION, method=settings.drift_method, threshold=settings.drift_threshold),
    ]
    if labelled >= 2:
        metrics += [RMSE(error_distr=False), R2Score(), MAE(error_distr=False)]
    current = current.loc[:, columns].astype(float)
    with _quiet_third_party_warnings():
        snapshot = Report(metrics, include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference.loc[:, columns], data_definition=definition),
        )
    result = snapshot.dict()
    drift_status = {test["metric_config"]["metric_id"]: str(test["status"]) for test in result["tests"] if test["id"] == "drift"}
    scores: dict[str, float] = {}
    drifted: dict[str, bool] = {}
    quality: dict[str, float] = {}
    reference_quality: dict[str, float] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            scores[config["column"]] = float(metric["value"])
            drifted[config["column"]] = drift_status.get(metric["id"], "").endswith("FAIL")  # FAIL = drift detected
        elif kind in ("RMSE", "R2Score", "MAE"):
            name = {"RMSE": "rmse", "R2Score": "r2", "MAE": "mae"}[kind]
            quality[name] = _scalar(metric["value"])
            try:  # reference values live on the snapshot's context, not in dict()
                reference_quality[name] = _scalar(snapshot.context.get_reference_metric_result(metric["id"]).to_dict()["value"])
            except ReferenceMetricNotFound:  # a BaseException subclass
                pass
    ordered = [name for name in MONITORED_COLUMNS if name in scores]
    figures = WindowFigures(
        window_rows=len(current),
        labelled_rows=labelled,
        drift_scores={name: scores[name] for name in ordered},
        drifted={name: drifted[name] for name in ordered},
        drift_method=settings.drift_method,
        rmse=quality.get("rmse"), r2=quality.get("r2"), mae=quality.get("mae"),
        reference_rmse=reference_quality.get("rmse"), reference_r2=reference_quality.get("r2"), reference_mae=reference_quality.get("mae"),
    )
    return snapshot, figures


def _scalar(value: Any) -> float:
    return float(value["mean"] if isinstance(value, dict) else value)


@contextlib.contextmanager
def _quiet_third_party_warnings() -> Any:
    """Evidently's import triggers deprecation warnings inside numpy and litestar, and its internal binned
    statistics warn on tiny bins (R2 of one sample, 0/0 share of infinities); they are not ours to fix."""
    from sklearn.exceptions import UndefinedMetricWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="invalid value encountered in scalar divide", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=r"numpy\.core is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*deprecated.*", category=DeprecationWarning, module=r"litestar.*")
        warnings.filterwarnings("ignore", message=r"Call to deprecated|Use of deprecated", category=DeprecationWarning)
        yield


# --- reports -------------------------------------------------------------------------------------------
@dataclass
class SavedReport:
    html_path: Path
    json_path: Path
    decision_path: Path


def save_report(snapshot: Any, figures: WindowFigures, decision: Decision, settings: Settings, when: datetime) -> SavedReport:
    """HTML and JSON report plus the decision under artifacts/reports/, timestamped and as *_latest."""
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    reports = settings.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    html_path, json_path, decision_path = (reports / f"monitor_{stamp}.html", reports / f"monitor_{stamp}.json",
                                           reports / f"decision_{stamp}.json")
    with atomic_path(html_path) as tmp:
        snapshot.save_html(str(tmp))
    with atomic_path(json_path) as tmp:
        tmp.write_text(snapshot.json())
    summary = decision_record(figures, decision, when)
    save_json(summary, decision_path)
    for path in (html_path, json_path, decision_path):
        latest = path.with_name(path.name.replace(stamp, "latest"))
        with atomic_path(latest) as tmp:
            tmp.write_bytes(path.read_bytes())
    return SavedReport(html_path, json_path, decision_path)


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


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def log_monitoring_run(settings: Settings, figures: WindowFigures, decision: Decision, saved: SavedReport | None,
                       extra_tags: dict[str, str] | None = None) -> str:
    """One MLflow run in the monitoring experiment, so the trend shows in the MLflow UI."""
    import mlflow

    from housing import tracking

    client = tracking.connect(settings)
    experiment_id = tracking.ensure_experiment(client, settings.monitoring_experiment_name, settings.mlflow_artifact_location)
    metrics = {
        "window_rows": figures.window_rows,
        "labelled_rows": figures.labelled_rows,
        "drift_share": figures.drift_share,
        "drifted_features": len(figures.drifted_features),
        "retrain": 1.0 if decision.retrain else 0.0,
        **{f"drift_score_{name}": score for name, score in figures.drift_scores.items() if finite(score)},
        **{name: value for name, value in (("rmse", figures.rmse), ("r2", figures.r2), ("mae", figures.mae),
                                            ("reference_rmse", figures.reference_rmse), ("reference_r2", figures.reference_r2),
                                            ("reference_mae", figures.reference_mae)) if finite(value)},
    }
    tags = {"decision": decision.action, "reasons": "; ".join(decision.reasons)[:4000] or "-", **(extra_tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor {datetime.now(UTC):%Y-%m-%d %H:%M:%S}", tags=tags) as run:
        mlflow.log_params({
            "window": settings.monitor_window, "min_window": settings.monitor_min_window, "min_labels": settings.monitor_min_labels,
            "drift_method": settings.drift_method, "drift_threshold": settings.drift_threshold,
            "drift_share_threshold": settings.drift_share_threshold, "rmse_threshold": settings.rmse_threshold,
            "r2_threshold": settings.r2_threshold,
        })
        mlflow.log_metrics(metrics)
        if saved is not None:
            for path in (saved.html_path, saved.json_path, saved.decision_path):
                mlflow.log_artifact(str(path), artifact_path="report")
    return run.info.run_id


# --- the whole monitoring step ------------------------------------------------------------------------
class RetrainFailed(Exception):
    """The decision was to retrain and retraining failed; production was not touched."""


@dataclass
class MonitorOutcome:
    figures: WindowFigures
    decision: Decision
    saved: SavedReport | None
    monitoring_run_id: str | None
    retrained: Any = None
    """The RetrainOutcome when the monitor retrained."""


def run_monitor(settings: Settings, *, since: datetime | None = None, dry_run: bool = False) -> MonitorOutcome:
    """Read the window, compare it with the reference, decide, record the decision, retrain if needed.

    A retrain that fails raises; production is untouched because only promote moves the alias, last.
    """
    from housing import tracking
    from housing.data import load_split, read_manifest
    from housing.prediction_log import make_engine, read_window
    from housing.registry import load_model
    from housing.retraining import retrain

    engine = make_engine(settings.prediction_log)
    try:
        current = read_window(engine, last_n=settings.monitor_window if since is None else None, since=since)
    finally:
        engine.dispose()
    split = load_split(settings.split_dir)
    tracking.connect(settings)
    production = load_model(f"models:/{settings.model_name}@{settings.production_alias}", settings.tracking_uri)
    reference = reference_frame(split.x_train, split.y_train, production)
    when = datetime.now(UTC)
    snapshot, figures = evaluate_window(reference, current, settings)
    decision = decide(figures, settings)
    saved = save_report(snapshot, figures, decision, settings, when) if snapshot is not None else None
    if dry_run and decision.retrain:
        decision.notes.append("--dry-run: not retraining")
    run_id = log_monitoring_run(settings, figures, decision, saved, {"dry_run": str(dry_run).lower()})
    outcome = MonitorOutcome(figures, decision, saved, run_id)
    if decision.retrain and not dry_run:
        labelled = current[current[TARGET.name].notna()]
        try:
            outcome.retrained = retrain(settings, split, labelled, base_source=read_manifest(settings.manifest_path).source)
        except Exception as error:
            tracking.connect(settings).set_tag(run_id, "retrain_failed", f"{type(error).__name__}: {error}"[:4000])
            raise RetrainFailed(f"{type(error).__name__}: {first_line(error)}") from error
        promotion = outcome.retrained.promotion
        client = tracking.connect(settings)
        client.set_tag(run_id, "retrain_training_run_id", outcome.retrained.training.parent_run_id)
        client.set_tag(run_id, "promoted_version", promotion.production_after if promotion.production_changed else "none")
    return outcome
