"""Candidate models: their reviewed configuration, the pipelines built from it, fitting, CV and metrics.

Every candidate is one scikit-learn ``Pipeline`` that takes the 8 raw features: the outlier rule, the
scaler, then the estimator. That pipeline is what gets logged, registered and served.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.metrics import (
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    root_mean_squared_error,
)
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from housing.errors import UserError
from housing.features import NeighborTargetEncoder, OutlierClipper, SpatialFeatures
from housing.schema import FEATURE_NAMES

logger = logging.getLogger(__name__)

ESTIMATORS: dict[str, str] = {
    "LinearRegression": "sklearn.linear_model",
    "RandomForestRegressor": "sklearn.ensemble",
    "GradientBoostingRegressor": "sklearn.ensemble",
    "HistGradientBoostingRegressor": "sklearn.ensemble",
    "LGBMRegressor": "lightgbm",
}
"""Estimator kinds a candidate may use, with their module (a fixed list: the config file can't name
arbitrary classes). Imported when a pipeline is built, so a stage only loads the libraries it uses."""

TREE_COUNT_PARAMS = ("n_estimators", "max_iter")
"""Constructor parameters that count trees; ``estimator_scale`` multiplies them."""

SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "collections.OrderedDict",
    "housing.features.NeighborTargetEncoder",
    "housing.features.OutlierClipper",
    "housing.features.SpatialFeatures",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMRegressor",
    "sklearn.tree._tree.Tree",
)
"""Types beyond skops' defaults that a logged pipeline may hold; the only ones loading will accept."""

RELATIVE_FIT_COST = {"GradientBoostingRegressor": 39.0, "RandomForestRegressor": 62.0, "LGBMRegressor": 4.0, "HistGradientBoostingRegressor": 2.0}
"""Rough fit seconds per 1,000 trees, only used to start the slowest fits first."""


@dataclass(frozen=True)
class CandidateSpec:
    """One candidate model as reviewed in ``candidates.yaml``."""

    name: str
    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    features: str = "raw"
    """``raw``: the 8 features; ``spatial``: plus engineered spatial features and out-of-fold neighbour targets."""
    description: str = ""

    def scaled_params(self, estimator_scale: float) -> dict[str, Any]:
        """Constructor parameters with tree counts multiplied by ``estimator_scale`` (at least 1 tree)."""
        params = dict(self.params)
        for key in TREE_COUNT_PARAMS:
            if key in params:
                params[key] = max(1, round(params[key] * estimator_scale))
        return params

    def expected_cost(self, estimator_scale: float) -> float:
        """A rough relative fit cost, to schedule the slowest fits first."""
        params = self.scaled_params(estimator_scale)
        trees = next((params[key] for key in TREE_COUNT_PARAMS if key in params), 1)
        return RELATIVE_FIT_COST.get(self.estimator, 1.0) * trees / 1000


def load_candidate_specs(path: Path, names: list[str] | None = None) -> list[CandidateSpec]:
    """Read the candidates file; ``names`` selects and orders a subset."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"candidates file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise UserError(f"candidates file {path} is not valid YAML ({error})") from None
    specs = {}
    for name, entry in (raw or {}).items():
        if entry.get("features", "raw") not in FEATURE_SETS:
            raise UserError(f"candidate {name} in {path} names unknown feature set {entry.get('features')!r}; known: {', '.join(FEATURE_SETS)}")
        if entry.get("estimator") not in ESTIMATORS:
            raise UserError(
                f"candidate {name} in {path} names unknown estimator {entry.get('estimator')!r}; "
                f"known: {', '.join(ESTIMATORS)}"
            )
        specs[name] = CandidateSpec(name=name, **entry)
    if names is None:
        return list(specs.values())
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise UserError(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(specs)}")
    return [specs[name] for name in names]


FEATURE_SETS = ("raw", "spatial")


def build_pipeline(
    spec: CandidateSpec, *, outlier_quantiles: tuple[float, float], estimator_scale: float, random_state: int = 42
) -> Pipeline:
    """The unfitted pipeline of a candidate, raw 8 features in: outlier rule, [spatial features and
    out-of-fold neighbour targets,] scaler, estimator."""
    estimator_class = getattr(importlib.import_module(ESTIMATORS[spec.estimator]), spec.estimator)
    estimator = estimator_class(**spec.scaled_params(estimator_scale))
    steps: list[tuple[str, Any]] = [("outliers", OutlierClipper(quantiles=outlier_quantiles))]
    if spec.features == "spatial":
        steps += [("spatial", SpatialFeatures()), ("neighbors", NeighborTargetEncoder(random_state=random_state))]
    steps += [("scaler", StandardScaler()), ("model", estimator)]
    return Pipeline(steps)


def untrusted_types(pipeline: Pipeline) -> list[str]:
    """Types in ``pipeline`` that skops would refuse to load with :data:`SKOPS_TRUSTED_TYPES`."""
    import skops.io

    found = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    return [name for name in found if name not in SKOPS_TRUSTED_TYPES]


def regression_metrics(y_true: np.ndarray | pd.Series, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> dict[str, float]:
    """The project's one definition of r2, rmse, mae and mse (optionally weighted)."""
    return {
        "r2": float(r2_score(y_true, y_pred, sample_weight=sample_weight)),
        "rmse": float(root_mean_squared_error(y_true, y_pred, sample_weight=sample_weight)),
        "mae": float(mean_absolute_error(y_true, y_pred, sample_weight=sample_weight)),
        "mse": float(mean_squared_error(y_true, y_pred, sample_weight=sample_weight)),
    }


@dataclass
class FittedCandidate:
    """A candidate fitted on the whole training split, with its cross-validation scores."""

    spec: CandidateSpec
    pipeline: Pipeline
    fit_seconds: float
    cv_r2: list[float]

    @property
    def cv_r2_mean(self) -> float:
        return float(np.mean(self.cv_r2))

    @property
    def cv_r2_std(self) -> float:
        return float(np.std(self.cv_r2))


def _fit_params(sample_weight: np.ndarray | None) -> dict[str, Any]:
    return {} if sample_weight is None else {"model__sample_weight": sample_weight}


def _fit_task(
    index: int,
    fold: int | None,
    pipeline: Pipeline,
    x: pd.DataFrame,
    y: pd.Series,
    sample_weight: np.ndarray | None,
    rows: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[int, int | None, Pipeline | None, float, float | None]:
    """Fit on all rows (``rows`` None: return the model) or on one CV fold (return its held-out R2 only)."""
    pipeline = clone(pipeline)
    if rows is None:
        started = time.perf_counter()
        pipeline.fit(x, y, **_fit_params(sample_weight))
        return index, fold, pipeline, time.perf_counter() - started, None
    train_rows, held_out = rows
    weights = None if sample_weight is None else sample_weight[train_rows]
    pipeline.fit(x.iloc[train_rows], y.iloc[train_rows], **_fit_params(weights))
    held_weights = None if sample_weight is None else sample_weight[held_out]
    score = r2_score(y.iloc[held_out], pipeline.predict(x.iloc[held_out]), sample_weight=held_weights)
    return index, fold, None, 0.0, float(score)


def fit_candidates(
    specs: list[CandidateSpec],
    x_train: pd.DataFrame,
    y_train: pd.Series,
    *,
    outlier_quantiles: tuple[float, float],
    estimator_scale: float,
    cv_folds: int,
    random_state: int,
    n_jobs: int,
    sample_weight: np.ndarray | None = None,
) -> Iterator[FittedCandidate]:
    """Fit every candidate on the training split and cross-validate it there (never on the test split).

    All fits (one full fit and ``cv_folds`` fold fits per candidate) run in one pool of ``n_jobs``
    processes, slowest first, so the comparison takes about (total CPU time / n_jobs). The work starts
    when this is called; the returned iterator yields each candidate as soon as its fits are done, so
    the caller can log early finishers while the slow ones still run.
    """
    x_train = x_train.loc[:, list(FEATURE_NAMES)]
    folds = list(KFold(n_splits=cv_folds, shuffle=True, random_state=random_state).split(x_train))
    pipelines = [
        build_pipeline(spec, outlier_quantiles=outlier_quantiles, estimator_scale=estimator_scale, random_state=random_state)
        for spec in specs
    ]
    tasks = [(index, fold) for index in range(len(specs)) for fold in [None, *range(cv_folds)]]
    fold_share = (cv_folds - 1) / cv_folds
    tasks.sort(key=lambda task: -specs[task[0]].expected_cost(estimator_scale) * (1.0 if task[1] is None else fold_share))
    logger.info("fitting %d candidates x (1 + %d CV folds) on %d rows with %d process(es)", len(specs), cv_folds, len(x_train), n_jobs)
    started = time.perf_counter()
    results = Parallel(n_jobs=n_jobs, backend="loky" if n_jobs > 1 else "sequential", return_as="generator_unordered")(
        delayed(_fit_task)(index, fold, pipelines[index], x_train, y_train, sample_weight, None if fold is None else folds[fold])
        for index, fold in tasks
    )
    return _collect(specs, cv_folds, results, started)


def _collect(
    specs: list[CandidateSpec], cv_folds: int, results: Iterator[tuple[int, int | None, Pipeline | None, float, float | None]], started: float
) -> Iterator[FittedCandidate]:
    fitted: dict[int, tuple[Pipeline, float]] = {}
    scores: dict[int, list[float]] = {index: [] for index in range(len(specs))}
    for index, fold, pipeline, fit_seconds, score in results:
        if fold is None:
            fitted[index] = (pipeline, fit_seconds)
        else:
            scores[index].append(score)
        if index in fitted and len(scores[index]) == cv_folds:
            pipeline, seconds = fitted.pop(index)
            yield FittedCandidate(spec=specs[index], pipeline=pipeline, fit_seconds=seconds, cv_r2=scores[index])
    logger.info("fitted every candidate in %.1f s", time.perf_counter() - started)
