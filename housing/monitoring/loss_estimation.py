"""Error without labels: direct loss estimation (DLE) for every model version, per window and per segment.

House prices are confirmed by sales months after a prediction, so for most of a version's life the monitor
sees drift but not error. Direct loss estimation (NannyML's DLE) answers "did the model get worse?" before
the labels come: a second model, the *loss model*, learns the production model's squared error from the
inputs and the prediction, on predictions the production model did not train on; the mean of its
estimates over a window of served predictions is the window's estimated MSE.

How this module does it, and why:

- **Shape from out-of-fold errors.** A version's loss model is fitted when the version is trained, on the
  out-of-fold predictions of the cross-validation the training run already does (each training row
  predicted by the fold model that did not see it): the 8 raw features and that prediction in, the squared
  error out (LightGBM, small). Fold models train on part of the data, so their errors are larger than the
  final model's; the *shape* (which districts are hard) carries over, the *level* does not.
- **Level from held-out rows.** The fold models' extra error is mostly an extra variance added to every
  row, not a factor, so the raw estimates g are then mapped once to the final model's level by a straight
  line, a * g + b, fitted (least squares) to the final model's realized squared errors on the version's
  held-out evaluation rows (the test split; for a retrained version its evaluation data); the MAE is the mean
  of the square roots, rescaled the same way. Three numbers are fitted on held-out rows, never the shape.
  ``bench/monitor.py`` reports its table with a level fitted on one half of the test split and windows drawn
  from the other.
- **Interval.** Per row, the realized squared error scatters around its estimate with a variance that
  grows with the estimate (for a normal error, Var(e^2) = 2 E[e^2]^2); the ratio ``variance_ratio`` =
  sum((e^2 - g)^2) / sum(g^2) is measured on the held-out rows. The level itself is uncertain too (it was
  fitted on a few thousand heavy-tailed errors): ``level_sd``, the relative standard error of the held-out
  mean. A window of n rows gets mean(g) +- z * sqrt(variance_ratio * sum(g^2) / n^2 + (level_sd * mean(g))^2)
  on its MSE (square roots for the RMSE).
- **What it cannot see.** A shift of the labels alone (prices rising with the same districts: the
  ``market-inflation`` scenario) leaves inputs and predictions unchanged, so no estimate from them can
  move; only labels reveal it. A change of the relation between inputs and price (incomes scaled while
  prices are not) is only partly visible.
- **Safe loading.** The loss model is saved with skops and loaded trusting only
  :data:`housing.registry.model_files.SKOPS_TRUSTED_TYPES`, like the models; its numbers in a JSON file.

Segments: five regions from latitude and longitude (approximate boxes, first match wins: Bay Area, Los
Angeles, San Diego, Central Valley, the rest of California) and three median-income bands.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from housing.errors import UserError
from housing.monitoring.segments import MIN_SEGMENT_ROWS, segment_masks
from housing.schema import FEATURE_NAMES

if TYPE_CHECKING:
    from lightgbm import LGBMRegressor
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

ARTIFACT_PATH = "loss_estimator"
"""Where a version's loss estimator is logged in its run's artifacts."""
MODEL_FILE, NUMBERS_FILE = "loss_model.skops", "loss_estimator.json"
LOSS_MODEL_PARAMS: dict[str, Any] = {
    "n_estimators": 300,
    "learning_rate": 0.06,
    "num_leaves": 31,
    "min_child_samples": 20,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.9,
    "verbose": -1,
    "n_jobs": 1,
}
"""The loss model: small (about 0.7 s on the 16,512 training rows with one core)."""
FLOOR = 1e-6
"""Estimated squared errors are at least this (a regression tree can go slightly below zero)."""


@dataclass(frozen=True)
class Estimate:
    """The estimated error of ``rows`` predictions, with a confidence interval on the RMSE."""

    rows: int
    rmse: float
    rmse_low: float
    rmse_high: float
    mae: float
    confidence: float
    mse_row_sd: float
    """Standard deviation of one row's squared error (what a count of labels needed is computed from)."""

    def clears(self, threshold: float) -> bool:
        """Whether the whole interval is above ``threshold``."""
        return self.rmse_low > threshold

    def labels_needed(self, threshold: float) -> int | None:
        """Labelled predictions needed for the realized RMSE's own interval to clear ``threshold`` if the
        estimate is right (None when the estimate is not above it)."""
        gap = self.rmse**2 - threshold**2
        if gap <= 0:
            return None
        z = NormalDist().inv_cdf(0.5 + self.confidence / 2)
        return max(1, math.ceil((z * self.mse_row_sd / gap) ** 2))

    def as_dict(self) -> dict[str, float | int]:
        """Rounded, for the decision file."""
        return {
            "rows": self.rows,
            "rmse": round(self.rmse, 4),
            "rmse_low": round(self.rmse_low, 4),
            "rmse_high": round(self.rmse_high, 4),
            "mae": round(self.mae, 4),
        }


@dataclass(frozen=True)
class LossEstimator:
    """A version's loss model and the numbers that put its estimates on the final model's level."""

    model: LGBMRegressor
    mse_slope: float = 1.0
    mse_intercept: float = 0.0
    mae_scale: float = 1.0
    variance_ratio: float = 2.0
    level_sd: float = 0.0
    """Relative standard error of the anchored level (from the held-out rows it was fitted on)."""
    fitted_rows: int = 0
    anchored_rows: int = 0
    description: str = ""

    def squared_errors(self, features: pd.DataFrame, predictions: np.ndarray) -> np.ndarray:
        """Each row's estimated squared error (on the final model's level)."""
        raw = np.maximum(
            np.asarray(self.model.predict(loss_inputs(features, predictions)), dtype=np.float64), FLOOR
        )
        return np.maximum(self.mse_slope * raw + self.mse_intercept, FLOOR)

    def estimate(self, features: pd.DataFrame, predictions: np.ndarray, confidence: float) -> Estimate:
        """The estimated RMSE (interval at ``confidence``) and MAE of these predictions."""
        g = self.squared_errors(features, predictions)
        n = len(g)
        if n == 0:
            raise ValueError("no rows to estimate")
        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        mse = float(g.mean())
        half = z * math.sqrt(
            self.variance_ratio * float(np.square(g).sum()) / n**2 + (self.level_sd * mse) ** 2
        )
        row_var = max(float(np.square(g).mean()) * (1 + self.variance_ratio) - mse**2, 0.0)
        mae = float(np.sqrt(g).mean()) * self.mae_scale
        return Estimate(
            n,
            math.sqrt(mse),
            math.sqrt(max(mse - half, 0.0)),
            math.sqrt(mse + half),
            mae,
            confidence,
            math.sqrt(row_var),
        )

    def numbers(self) -> dict[str, Any]:
        """Everything but the loss model itself (saved as JSON beside it)."""
        return {key: value for key, value in asdict(self).items() if key != "model"}


def loss_inputs(features: pd.DataFrame, predictions: np.ndarray) -> np.ndarray:
    """The loss model's inputs: the 8 raw features in contract order, then the model's prediction."""
    values = features.loc[:, list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    return np.column_stack([values, np.asarray(predictions, dtype=np.float64)])


def fit_loss_estimator(
    features: pd.DataFrame,
    y: pd.Series | np.ndarray,
    out_of_fold: np.ndarray,
    sample_weight: np.ndarray | None = None,
    random_state: int = 42,
) -> LossEstimator:
    """The loss model fitted on out-of-fold predictions (level not yet anchored: call :func:`anchor`)."""
    from lightgbm import (
        LGBMRegressor,
    )  # lightgbm loads its native library: only training and the monitor need it, not simulate_traffic

    target = np.square(np.asarray(y, dtype=np.float64) - np.asarray(out_of_fold, dtype=np.float64))
    model = LGBMRegressor(random_state=random_state, **LOSS_MODEL_PARAMS)
    model.fit(loss_inputs(features, out_of_fold), target, sample_weight=sample_weight)
    return LossEstimator(
        model,
        fitted_rows=len(target),
        description=f"loss model fitted on {len(target):,} out-of-fold predictions of the training rows",
    )


def anchor(
    estimator: LossEstimator,
    features: pd.DataFrame,
    y: pd.Series | np.ndarray,
    predictions: np.ndarray,
    sample_weight: np.ndarray | None = None,
    described: str = "held-out rows",
) -> LossEstimator:
    """Put the estimates on the final model's level: the line a * g + b (weighted least squares) from the raw
    estimates g to the realized squared errors of held-out rows (a plain rescaling if the line is degenerate);
    the MAE's scale and the interval's variance ratio are measured on the same rows."""
    raw = np.maximum(
        np.asarray(estimator.model.predict(loss_inputs(features, predictions)), dtype=np.float64), FLOOR
    )
    errors = np.asarray(y, dtype=np.float64) - np.asarray(predictions, dtype=np.float64)
    squared = np.square(errors)
    w = np.ones(len(raw)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    slope, intercept = np.polyfit(raw, squared, 1, w=np.sqrt(w))
    if not slope > 0:
        slope, intercept = float(np.average(squared, weights=w) / np.average(raw, weights=w)), 0.0
    g = np.maximum(slope * raw + intercept, FLOOR)
    mae_scale = float(np.average(np.abs(errors), weights=w) / np.average(np.sqrt(g), weights=w))
    variance_ratio = float(np.sum(w * np.square(squared - g)) / np.sum(w * np.square(g)))
    level_sd = float(np.sqrt(np.sum(np.square(w * (squared - g)))) / np.sum(w * g))
    return replace(
        estimator,
        mse_slope=float(slope),
        mse_intercept=float(intercept),
        mae_scale=mae_scale,
        variance_ratio=variance_ratio,
        level_sd=level_sd,
        anchored_rows=len(raw),
        description=f"{estimator.description}; level anchored on {len(raw):,} {described}",
    )


def save_loss_estimator(estimator: LossEstimator, directory: Path) -> None:
    """The loss model with skops and its numbers as JSON, in ``directory``."""
    import skops.io  # only saving and loading need skops

    directory.mkdir(parents=True, exist_ok=True)
    skops.io.dump(estimator.model, directory / MODEL_FILE)
    (directory / NUMBERS_FILE).write_text(json.dumps(estimator.numbers(), indent=2, sort_keys=True))


def read_loss_estimator(directory: Path, described: str) -> LossEstimator:
    """Load a saved estimator, trusting only :data:`~housing.registry.model_files.SKOPS_TRUSTED_TYPES` (never
    pickle)."""
    import skops.io  # only saving and loading need skops
    from lightgbm import (
        LGBMRegressor,
    )  # lightgbm loads its native library: only training and the monitor need it, not simulate_traffic

    from housing.registry.model_files import SKOPS_TRUSTED_TYPES  # imports skops: only loading needs it

    try:
        model = skops.io.load(directory / MODEL_FILE, trusted=list(SKOPS_TRUSTED_TYPES))
        numbers = json.loads((directory / NUMBERS_FILE).read_text())
    except (
        OSError,
        ValueError,
        TypeError,
    ) as error:  # skops raises UntrustedTypesFoundException (a TypeError) on untrusted types
        raise UserError(f"the loss estimator of {described} could not be loaded safely: {error}") from error
    if not isinstance(model, LGBMRegressor):
        raise UserError(
            f"the loss estimator of {described} is a {type(model).__name__}, not a LightGBM regressor"
        )
    fields = {
        "mse_slope",
        "mse_intercept",
        "mae_scale",
        "variance_ratio",
        "level_sd",
        "fitted_rows",
        "anchored_rows",
        "description",
    }
    return LossEstimator(model, **{key: value for key, value in numbers.items() if key in fields})


def log_loss_estimator(estimator: LossEstimator) -> None:
    """Log the estimator in the active MLflow run (under :data:`ARTIFACT_PATH`)."""
    import mlflow  # ~2 s to import: paid by the stages that log or load

    with tempfile.TemporaryDirectory(prefix="housing-loss-") as tmp:
        save_loss_estimator(estimator, Path(tmp))
        mlflow.log_artifacts(tmp, artifact_path=ARTIFACT_PATH)


def load_loss_estimator(client: MlflowClient, version: ModelVersion) -> LossEstimator | None:
    """The loss estimator logged with ``version``'s run; None when the version has none (trained before
    estimators existed, or with fewer than two cross-validation folds)."""
    import mlflow  # ~2 s to import: paid by the stages that log or load
    from mlflow.exceptions import MlflowException  # ~2 s to import: paid by the stages that log or load

    if not version.run_id:
        return None
    described = f"{version.name} version {version.version}"
    try:
        names = {Path(item.path).name for item in client.list_artifacts(version.run_id, ARTIFACT_PATH)}
    except (MlflowException, OSError):
        return None
    if MODEL_FILE not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="housing-loss-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=ARTIFACT_PATH, dst_path=tmp, tracking_uri=client.tracking_uri
        )
        return read_loss_estimator(Path(local), described)


@dataclass
class WindowEstimate:
    """What the monitor estimates for one window: the unlabelled predictions' error overall and per segment,
    and, on the labelled part, the estimate beside the realized error (calibration)."""

    overall: Estimate
    over: str
    """Which rows were estimated ("unlabelled", or "all" when every row of the window is labelled)."""
    by_segment: dict[str, Estimate]
    calibration: dict[str, Any] | None
    """On the labelled rows: estimated vs realized RMSE, relative gap, whether the realized one is in the
    interval."""
    calibration_by_segment: dict[str, dict[str, Any]]

    def as_record(self) -> dict[str, Any]:
        """The decision file's fields."""
        return {
            "estimated_rmse": round(self.overall.rmse, 4),
            "estimated_rmse_interval": [round(self.overall.rmse_low, 4), round(self.overall.rmse_high, 4)],
            "estimated_mae": round(self.overall.mae, 4),
            "estimated_rows": self.overall.rows,
            "estimated_over": self.over,
            "estimation_confidence": self.overall.confidence,
            "estimated_rmse_by_segment": {
                name: estimate.as_dict() for name, estimate in self.by_segment.items()
            },
            "estimation_calibration": self.calibration,
            "estimation_calibration_by_segment": self.calibration_by_segment,
        }


def calibration_of(estimate: Estimate, y: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
    """The estimate of labelled rows beside their realized error."""
    realized = float(np.sqrt(np.mean(np.square(y - predictions))))
    return {
        "rows": estimate.rows,
        "estimated_rmse": round(estimate.rmse, 4),
        "realized_rmse": round(realized, 4),
        "relative_gap": round(estimate.rmse / realized - 1, 4) if realized > 0 else None,
        "inside_interval": bool(estimate.rmse_low <= realized <= estimate.rmse_high),
    }


def estimate_window(
    estimator: LossEstimator, window: pd.DataFrame, target: str, prediction: str, confidence: float
) -> WindowEstimate | None:
    """Estimate a window of logged predictions (None when it is empty)."""
    if window.empty:
        return None
    labelled = window[target].notna().to_numpy()
    over = "unlabelled" if (~labelled).any() else "all"
    rows = window[~labelled] if over == "unlabelled" else window
    predictions = rows[prediction].to_numpy(dtype=np.float64)
    overall = estimator.estimate(rows, predictions, confidence)
    by_segment = {
        name: estimator.estimate(rows[mask], predictions[mask], confidence)
        for name, mask in segment_masks(rows).items()
        if mask.sum() >= MIN_SEGMENT_ROWS
    }
    calibration, calibration_by_segment = None, {}
    if labelled.sum() >= MIN_SEGMENT_ROWS:
        known = window[labelled]
        y, known_predictions = (
            known[target].to_numpy(dtype=np.float64),
            known[prediction].to_numpy(dtype=np.float64),
        )
        calibration = calibration_of(
            estimator.estimate(known, known_predictions, confidence), y, known_predictions
        )
        for name, mask in segment_masks(known).items():
            if mask.sum() >= MIN_SEGMENT_ROWS:
                segment = estimator.estimate(known[mask], known_predictions[mask], confidence)
                calibration_by_segment[name] = calibration_of(segment, y[mask], known_predictions[mask])
    return WindowEstimate(overall, over, by_segment, calibration, calibration_by_segment)
