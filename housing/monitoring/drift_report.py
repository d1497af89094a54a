"""The Evidently 0.7 drift and quality report of one traffic window against the training reference.

Evidently computes data drift on the 8 features and the prediction, and regression quality on the
labelled part of the window with the labelled reference beside it. :func:`evaluate_window` reduces the
report to :class:`WindowFigures` (what the retrain policy judges); :func:`save_report` writes the HTML and
JSON report and the decision under the reports directory, timestamped and as ``*_latest``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning

from housing.config.settings import Settings
from housing.data.artifacts import atomic_path, save_json
from housing.schema import FEATURE_NAMES, TARGET

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
    from sklearn.pipeline import Pipeline

PREDICTION = "prediction"
MONITORED_COLUMNS = (*FEATURE_NAMES, PREDICTION)
QUALITY_METRICS = {"RMSE": "rmse", "R2Score": "r2", "MAE": "mae"}
"""Evidently's regression metric types and the names the figures use for them."""


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
        """The features (not the prediction) whose drift test failed, in schema order."""
        return [name for name in FEATURE_NAMES if self.drifted.get(name)]

    @property
    def drift_share(self) -> float:
        """The share of the 8 features that drifted."""
        return len(self.drifted_features) / len(FEATURE_NAMES)

    @property
    def prediction_drifted(self) -> bool:
        """Whether the prediction's distribution drifted."""
        return bool(self.drifted.get(PREDICTION))


def reference_frame(
    features: pd.DataFrame, held_out_x: pd.DataFrame, held_out_y: pd.Series, model: Pipeline
) -> pd.DataFrame:
    """The monitor's reference: two samples side by side, which the report never joins.

    The 8 feature columns are ``features``, the data the model learnt from: drift is measured against what it
    was trained on. The target and prediction columns are the model's predictions on held-out rows it never
    trained on (``held_out_x``, ``held_out_y``), repeated in order to the features' length: the reference
    error (and the prediction's reference distribution) compares like with like, never with in-sample
    predictions, which are far better than the model's real error. Every statistic of the report is of one
    column or of the (target, prediction) pair, so which feature row stands beside which held-out pair is
    never read.
    """
    frame = features.loc[:, list(FEATURE_NAMES)].reset_index(drop=True)
    predictions = np.asarray(model.predict(held_out_x.loc[:, list(FEATURE_NAMES)]), dtype=np.float64)
    picks = np.resize(np.arange(len(held_out_x)), len(frame))
    frame[TARGET.name] = held_out_y.to_numpy(dtype=np.float64)[picks]
    frame[PREDICTION] = predictions[picks]
    return frame


def evaluate_window(
    reference: pd.DataFrame, current: pd.DataFrame, settings: Settings, metadata: dict[str, str] | None = None
) -> tuple[Snapshot | None, WindowFigures]:
    """One Evidently 0.7 report: drift of the 8 features and the prediction, then regression quality.

    The drift metrics come first on purpose: Evidently's regression metrics drop the unlabelled rows
    from the current dataset in place, and drift must be measured on the whole window. An empty window
    gives no report (None) and empty figures.
    """
    labelled = int(current[TARGET.name].notna().sum()) if len(current) else 0
    if len(current) == 0:
        return None, WindowFigures(0, 0, {}, {}, settings.drift_method)
    # Evidently is imported here, not at the top: its import takes ~5 s and only the monitor needs it
    # (the API, the stages and the pure policies import this package without paying for it).
    with quiet_third_party_warnings():
        from evidently import DataDefinition, Dataset, Regression, Report  # expensive (~5 s), monitor only

    columns = [*FEATURE_NAMES, TARGET.name, PREDICTION]
    definition = DataDefinition(
        numerical_columns=columns, regression=[Regression(target=TARGET.name, prediction=PREDICTION)]
    )
    current = current.loc[:, columns].astype(float)
    with quiet_third_party_warnings():
        snapshot = Report(report_metrics(settings, labelled), include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference.loc[:, columns], data_definition=definition),
            metadata=metadata or {},
        )
    return snapshot, read_figures(snapshot, len(current), labelled, settings.drift_method)


def report_metrics(settings: Settings, labelled: int) -> list[Any]:
    """The report's metrics, each with the decision's own threshold as its test.

    Every threshold the report shows is the one the decision uses (housing.monitoring.retrain_policy): the
    per-column drift threshold, the drifted share (Evidently flags share >= drift_share, the decision share
    > it: with 8 features the share moves in steps of 1/8, so for any threshold that is not a multiple of
    1/8, 0.2 included, the two agree), RMSE and R2 against the decision's limits instead of Evidently's
    default "within 10 % of the reference", and no test on MAE, which the decision does not judge.
    """
    with quiet_third_party_warnings():
        from evidently.metrics import MAE, RMSE, R2Score, ValueDrift  # expensive (~5 s), monitor only
        from evidently.presets import DataDriftPreset  # expensive (~5 s), monitor only
        from evidently.tests import gte, lte  # expensive (~5 s), monitor only

    metrics: list[Any] = [
        DataDriftPreset(
            columns=list(FEATURE_NAMES),
            num_method=settings.drift_method,
            num_threshold=settings.drift_threshold,
            drift_share=settings.drift_share_threshold,
        ),
        ValueDrift(column=PREDICTION, method=settings.drift_method, threshold=settings.drift_threshold),
    ]
    if labelled >= 2:
        metrics += [
            RMSE(error_distr=False, tests=[lte(settings.rmse_threshold)]),
            R2Score(tests=[gte(settings.r2_threshold)]),
            MAE(error_distr=False, mean_tests=[], std_tests=[]),
        ]
    return metrics


def read_figures(snapshot: Snapshot, window_rows: int, labelled: int, drift_method: str) -> WindowFigures:
    """The figures the decision judges, read from the report: drift score and verdict per column, the
    labelled rows' RMSE, R² and MAE, and the reference's."""
    from evidently.core.report import ReferenceMetricNotFound  # expensive (~5 s), monitor only

    result = snapshot.dict()
    drift_status = {
        test["metric_config"]["metric_id"]: str(test["status"])
        for test in result["tests"]
        if test["id"] == "drift"
    }
    scores: dict[str, float] = {}
    drifted: dict[str, bool] = {}
    quality: dict[str, float] = {}
    reference_quality: dict[str, float] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            scores[config["column"]] = float(metric["value"])
            drifted[config["column"]] = drift_status.get(metric["id"], "").endswith("FAIL")  # FAIL: drifted
        elif kind in QUALITY_METRICS:
            name = QUALITY_METRICS[kind]
            quality[name] = _scalar(metric["value"])
            # reference values live on the snapshot's context, not in dict(); ReferenceMetricNotFound is a
            # BaseException
            with contextlib.suppress(ReferenceMetricNotFound):
                reference_quality[name] = _scalar(
                    snapshot.context.get_reference_metric_result(metric["id"]).to_dict()["value"]
                )
    ordered = [name for name in MONITORED_COLUMNS if name in scores]
    return WindowFigures(
        window_rows=window_rows,
        labelled_rows=labelled,
        drift_scores={name: scores[name] for name in ordered},
        drifted={name: drifted[name] for name in ordered},
        drift_method=drift_method,
        rmse=quality.get("rmse"),
        r2=quality.get("r2"),
        mae=quality.get("mae"),
        reference_rmse=reference_quality.get("rmse"),
        reference_r2=reference_quality.get("r2"),
        reference_mae=reference_quality.get("mae"),
    )


def _scalar(value: Any) -> float:
    return float(value["mean"] if isinstance(value, dict) else value)


@contextlib.contextmanager
def quiet_third_party_warnings() -> Iterator[None]:
    """Evidently's import triggers deprecation warnings inside numpy and litestar, and its internal binned
    statistics warn on tiny bins (R2 of one sample, 0/0 share of infinities); they are not ours to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        warnings.filterwarnings(
            "ignore", message="invalid value encountered in scalar divide", category=RuntimeWarning
        )
        warnings.filterwarnings("ignore", message=r"numpy\.core is deprecated", category=DeprecationWarning)
        warnings.filterwarnings(
            "ignore", message=r".*deprecated.*", category=DeprecationWarning, module=r"litestar.*"
        )
        warnings.filterwarnings(
            "ignore", message=r"Call to deprecated|Use of deprecated", category=DeprecationWarning
        )
        yield


@dataclass
class SavedReport:
    """Where one monitoring round's HTML report, JSON report and decision were written (timestamped)."""

    html_path: Path
    json_path: Path
    decision_path: Path


def save_report(
    snapshot: Snapshot, decision: dict[str, Any], reports_dir: Path, when: datetime
) -> SavedReport:
    """HTML and JSON report plus the decision record under ``reports_dir``, timestamped and as *_latest."""
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    reports_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path, decision_path = (
        reports_dir / f"monitor_{stamp}.html",
        reports_dir / f"monitor_{stamp}.json",
        reports_dir / f"decision_{stamp}.json",
    )
    with atomic_path(html_path) as tmp:
        snapshot.save_html(str(tmp))
    with atomic_path(json_path) as tmp:
        tmp.write_text(snapshot.json())
    save_json(decision, decision_path)
    for path in (html_path, json_path, decision_path):
        latest = path.with_name(path.name.replace(stamp, "latest"))
        with atomic_path(latest) as tmp:
            tmp.write_bytes(path.read_bytes())
    return SavedReport(html_path, json_path, decision_path)
