"""Prediction intervals, calibrated when a version is trained: conformalised quantile regression of its own
errors, with a Mondrian correction per region and income band.

Every answer carries a range that should hold the true value ``level`` of the time (90 % by default). How a
version's range is made, and why (the alternatives measured are in docs/decisions.md and bench/intervals.py):

- **From errors the model made on rows it did not train on.** The cross-validation the training run already
  does predicts every training row with a fold model that never saw it (the candidate's ``cv_folds``; ten
  for the production candidate, so that each fold model saw 90 % of the rows and its errors are close to the
  final model's). The test split is never used, and a retrained version is calibrated on its own training
  rows' out-of-fold predictions, never on its evaluation rows.
- **Shaped by two quantile models.** Two small LightGBM models learn the ``(1 - level) / 2`` and
  ``(1 + level) / 2`` quantiles of that error from the 8 features and the prediction: a district whose price
  is hard to tell (the Bay Area's, a top-coded one) gets a wider range, an easy one a narrower one.
- **Made valid by conformal calibration.** The quantile models' own errors are measured by cross-fitting
  (each calibration row scored by quantile models that did not see it); the range is widened (or narrowed)
  by the ``level`` quantile of how far each true value fell outside it, so that on these rows exactly
  ``level`` of the truths fall inside. Per region and per income band the same quantile is taken again, and a
  row gets the larger of its region's and its band's (Mondrian calibration): no region or band is covered
  less than the others to make up the average.
- **Within what a district can be worth.** The range is cut to the data's range at the version's price
  index (prices were top-coded at $500,001).

The quantile models are saved with skops (the models' trusted-type list) and their numbers in JSON under the
version's run (``interval/``); the API evaluates their trees through the compiled kernel, checked equal to
LightGBM's own predict when the version loads (:mod:`housing.serving.intervals`).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from housing.errors import UserError
from housing.monitoring.segments import INCOME_BANDS, REGION_NAMES, income_codes, region_codes
from housing.schema import FEATURE_NAMES
from housing.training.scoring import kfold_indices

if TYPE_CHECKING:
    from lightgbm import LGBMRegressor
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

ARTIFACT_DIR = "interval"
QUANTILE_PARAMS: dict[str, Any] = {
    "n_estimators": 60,
    "num_leaves": 15,
    "learning_rate": 0.1,
    "min_child_samples": 50,
    "verbose": -1,
    "n_jobs": 1,
}
"""The quantile models: small (60 trees of 15 leaves: ~5 µs a row each, compiled), since they learn a
scale, not the price."""
CROSS_FIT_FOLDS = 5
MIN_GROUP_ROWS = 200
"""A region or income band with fewer calibration rows takes the overall correction."""


@dataclass
class IntervalCalibration:
    """A version's interval: its quantile models of the error and its conformal corrections."""

    level: float
    low_model: LGBMRegressor
    high_model: LGBMRegressor
    correction: float
    """The overall conformal correction (added outside each quantile)."""
    region_corrections: list[float]
    """Per region of :data:`housing.monitoring.segments.REGION_NAMES`."""
    income_corrections: list[float]
    """Per band of :data:`housing.monitoring.segments.INCOME_BANDS`."""
    rows: int
    description: str = ""
    calibration_coverage: dict[str, float] = field(default_factory=dict)
    """The calibrated interval's coverage of the calibration rows (cross-fitted), overall and per segment."""

    def corrections_for(self, values: np.ndarray) -> np.ndarray:
        """Each row's correction: the larger of its region's and its income band's (Mondrian)."""
        regions = np.asarray(self.region_corrections)[region_codes(values)]
        incomes = np.asarray(self.income_corrections)[income_codes(values)]
        return np.maximum(regions, incomes)

    def offsets(self, values: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How far below and above each prediction its range reaches (library predict; the API's compiled
        path computes the same): (prediction - low, high - prediction), before any cut to the data's range."""
        inputs = interval_inputs(values, predictions)
        correction = self.corrections_for(values)
        low = np.asarray(self.low_model.predict(inputs), dtype=np.float64) - correction
        high = np.asarray(self.high_model.predict(inputs), dtype=np.float64) + correction
        return -low, high

    def numbers(self) -> dict[str, Any]:
        """Everything but the models, for the JSON file beside them."""
        found = asdict(self)
        found.pop("low_model")
        found.pop("high_model")
        return found


def interval_inputs(values: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """The quantile models' inputs: the 8 raw features in contract order, then the prediction."""
    return np.column_stack([np.asarray(values, dtype=np.float64), np.asarray(predictions, dtype=np.float64)])


def conformal_quantile(scores: np.ndarray, level: float, weights: np.ndarray | None = None) -> float:
    """The (weighted) split-conformal quantile: the smallest score below which ``level`` of the scores fall,
    with the finite-sample (n + 1) correction."""
    order = np.argsort(scores)
    ordered = scores[order]
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    cumulative = np.cumsum(w) / (w.sum() + w.mean())  # the test point's own weight: the (n + 1) correction
    position = int(np.searchsorted(cumulative, level, side="left"))
    return float(ordered[min(position, len(ordered) - 1)])


def fit_interval(
    features: pd.DataFrame,
    y: pd.Series | np.ndarray,
    out_of_fold: np.ndarray,
    level: float,
    sample_weight: np.ndarray | None = None,
    random_state: int = 42,
) -> IntervalCalibration:
    """Calibrate a version's interval on its training rows' out-of-fold predictions (see the module)."""
    from lightgbm import LGBMRegressor  # loads a native library: only training needs it here

    values = features.loc[:, list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    errors = np.asarray(y, dtype=np.float64) - np.asarray(out_of_fold, dtype=np.float64)
    inputs = interval_inputs(values, out_of_fold)
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    tails = ((1 - level) / 2, (1 + level) / 2)

    def quantile_model(alpha: float) -> LGBMRegressor:
        return LGBMRegressor(objective="quantile", alpha=alpha, random_state=random_state, **QUANTILE_PARAMS)

    low, high = np.empty(len(errors)), np.empty(len(errors))
    for train_rows, held_out in kfold_indices(len(errors), CROSS_FIT_FOLDS, random_state):
        fold_weights = None if weights is None else weights[train_rows]
        for alpha, out in zip(tails, (low, high), strict=True):
            model = quantile_model(alpha).fit(
                inputs[train_rows], errors[train_rows], sample_weight=fold_weights
            )
            out[held_out] = model.predict(inputs[held_out])
    scores = np.maximum(low - errors, errors - high)
    correction = conformal_quantile(scores, level, weights)

    def group_corrections(codes: np.ndarray, groups: int) -> list[float]:
        found = []
        for code in range(groups):
            rows = codes == code
            enough = rows.sum() >= MIN_GROUP_ROWS
            found.append(
                conformal_quantile(scores[rows], level, None if weights is None else weights[rows])
                if enough
                else correction
            )
        return found

    regions, incomes = region_codes(values), income_codes(values)
    region_corrections = group_corrections(regions, len(REGION_NAMES))
    income_corrections = group_corrections(incomes, len(INCOME_BANDS))
    chosen = np.maximum(np.asarray(region_corrections)[regions], np.asarray(income_corrections)[incomes])
    covered = (errors >= low - chosen) & (errors <= high + chosen)
    coverage = {"all": float(np.mean(covered))}
    coverage.update(
        {
            f"region: {name}": float(np.mean(covered[regions == code]))
            for code, name in enumerate(REGION_NAMES)
            if (regions == code).any()
        }
    )
    coverage.update(
        {
            name: float(np.mean(covered[incomes == code]))
            for code, (name, _, _) in enumerate(INCOME_BANDS)
            if (incomes == code).any()
        }
    )
    return IntervalCalibration(
        level=level,
        low_model=quantile_model(tails[0]).fit(inputs, errors, sample_weight=weights),
        high_model=quantile_model(tails[1]).fit(inputs, errors, sample_weight=weights),
        correction=correction,
        region_corrections=region_corrections,
        income_corrections=income_corrections,
        rows=len(errors),
        description=(
            f"conformalised quantile regression of the error, calibrated on {len(errors):,} out-of-fold"
            " predictions of the training rows, Mondrian by region and income band"
        ),
        calibration_coverage=coverage,
    )


def save_interval(calibration: IntervalCalibration, directory: Path) -> None:
    """The two quantile models (skops) and the numbers (JSON) into ``directory``."""
    import skops.io  # only training writes interval files: the API's start does not pay for skops here

    directory.mkdir(parents=True, exist_ok=True)
    skops.io.dump(calibration.low_model, directory / "low_model.skops")
    skops.io.dump(calibration.high_model, directory / "high_model.skops")
    (directory / "interval.json").write_text(json.dumps(calibration.numbers(), indent=2, sort_keys=True))


def read_interval(directory: Path, described: str) -> IntervalCalibration:
    """An interval saved by :func:`save_interval`, its models loaded trusting only the models' type list."""
    import skops.io  # loaded when a version loads, not when the API starts

    from housing.registry.model_files import SKOPS_TRUSTED_TYPES  # imports mlflow (~2 s): on first use

    try:
        numbers = json.loads((directory / "interval.json").read_text())
        models = [
            skops.io.load(directory / name, trusted=list(SKOPS_TRUSTED_TYPES))
            for name in ("low_model.skops", "high_model.skops")
        ]
    except Exception as error:  # noqa: BLE001 - an untrusted type, a truncated file: one sentence
        raise UserError(f"the prediction interval of {described} does not load safely ({error})") from None
    regions, incomes = numbers.get("region_corrections", []), numbers.get("income_corrections", [])
    if (
        not 0 < numbers.get("level", 0) < 1
        or len(regions) != len(REGION_NAMES)
        or len(incomes) != len(INCOME_BANDS)
        or not all(math.isfinite(v) for v in (*regions, *incomes))
    ):  # the compiled kernel indexes these lists by segment code: one per segment, every one a number
        raise UserError(f"the prediction interval of {described} has inconsistent numbers")
    return IntervalCalibration(low_model=models[0], high_model=models[1], **numbers)


def log_interval(calibration: IntervalCalibration) -> None:
    """Log the interval into the active MLflow run under ``interval/``."""
    import mlflow  # mlflow costs ~2 s to import: paid by training, which has it loaded already

    with tempfile.TemporaryDirectory(prefix="housing-interval-") as folder:
        save_interval(calibration, Path(folder))
        mlflow.log_artifacts(folder, ARTIFACT_DIR)


def load_interval(client: MlflowClient, version: ModelVersion) -> IntervalCalibration | None:
    """The interval logged with ``version``'s run; None when the version was registered without one."""
    if not version.run_id:
        return None
    names = {artifact.path for artifact in client.list_artifacts(version.run_id, ARTIFACT_DIR)}
    if f"{ARTIFACT_DIR}/interval.json" not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="housing-interval-") as folder:
        local = client.download_artifacts(version.run_id, ARTIFACT_DIR, folder)
        return read_interval(Path(local), f"{version.name} version {version.version}")
