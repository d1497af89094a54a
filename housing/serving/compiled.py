"""A fast predict path for a fitted pipeline, proven equal to ``pipeline.predict`` before it is used.

scikit-learn re-validates the input at every step of a pipeline, LightGBM's scikit-learn wrapper
re-processes its parameters at every call, HistGradientBoosting starts an OpenMP thread pool and a random
forest goes through joblib over its trees: for a batch of a few rows that costs far more than the
arithmetic. ``compile_pipeline`` turns each fitted step into the same arithmetic on a float64 array (the
API validates the input once, against the feature contract): the feature steps' numba kernels, the
scaler's formula, a linear model's ``values @ coef_ + intercept_``, and every tree ensemble the project
trains through the compiled tree kernels (``housing.serving.trees``, ``housing.serving.sklearn_trees``). For a
step it does not know it keeps the step's own method, and ``step_paths`` says so. The API serves with the
compiled path only when every step is compiled and it reproduces ``pipeline.predict`` on real-looking rows;
otherwise it uses the pipeline's own predict.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMRegressor
from sklearn.linear_model import ARDRegression, BayesianRidge, ElasticNet, Ridge
from sklearn.linear_model._base import LinearModel, MultiOutputLinearModel
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from housing.schema import FEATURE_NAMES, FEATURES
from housing.serving.sklearn_trees import flatten_sklearn
from housing.serving.trees import flatten_lightgbm
from housing.training.features import NeighborTargetEncoder, OutlierClipper, SpatialFeatures

logger = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]

PLAIN_LINEAR_PREDICTS = frozenset(
    {
        LinearModel.predict,
        MultiOutputLinearModel.predict,
        Ridge.predict,
        BayesianRidge.predict,
        ARDRegression.predict,
    }
)
"""Linear models' predict methods that return ``_decision_function(X)`` when a pipeline calls them (read in
scikit-learn 1.9's source: the others only re-document it, or add ``return_std``)."""
PLAIN_DECISION_FUNCTIONS = frozenset({LinearModel._decision_function, ElasticNet._decision_function})
"""``_decision_function`` methods that are ``X @ coef_ + intercept_`` on a dense array (LinearRegression,
Ridge, Lars, Huber, TheilSen, the Bayesian ones; Lasso and ElasticNet)."""


@dataclass(frozen=True)
class StepPath:
    """What runs for one step of a pipeline on the compiled path."""

    name: str
    """The pipeline step's name."""
    kind: str
    """The step's class name, e.g. ``HistGradientBoostingRegressor``."""
    compiled: bool
    """True: array arithmetic here; False: the library's own transform/predict runs."""


def _is_passthrough(step: Any) -> bool:
    return step is None or (isinstance(step, str) and step == "passthrough")


def _transform_step(step: Any) -> Predict | None:
    """The step as array arithmetic, or None when there is none."""
    if _is_passthrough(step):
        return lambda values: values
    if isinstance(step, StandardScaler):
        mean = step.mean_ if step.with_mean else 0.0
        scale = step.scale_ if step.with_std else 1.0
        return lambda values: (values - mean) / scale
    if isinstance(step, (OutlierClipper, SpatialFeatures, NeighborTargetEncoder)):
        transform: Predict = step.transform_array
        return transform
    return None


def _linear_predict(step: LinearModel) -> Predict:
    """``LinearModel._decision_function``: ``X @ coef_ + intercept_``, non-finite input refused as there."""
    coef, intercept = step.coef_, step.intercept_

    def predict(values: np.ndarray) -> np.ndarray:
        if not math.isfinite(values.sum()) and not np.isfinite(values).all():
            raise ValueError("input contains NaN or infinity, which this model's predict refuses")
        return np.asarray(values @ coef + intercept, dtype=np.float64)

    return predict


def _predict_step(step: Any) -> Predict | None:
    """The final estimator as array arithmetic, or None when there is none.

    Raises ValueError for a known kind fitted in a way the kernels don't reproduce (see ``flatten_sklearn``).
    """
    if isinstance(step, LGBMRegressor):
        return flatten_lightgbm(step.booster_).predict
    forest = flatten_sklearn(step)
    if forest is not None:
        return forest.predict
    if (
        isinstance(step, LinearModel)
        and type(step).predict in PLAIN_LINEAR_PREDICTS
        and type(step)._decision_function in PLAIN_DECISION_FUNCTIONS
        and np.ndim(step.coef_) == 1
    ):
        return _linear_predict(step)
    return None


def _compile_steps(pipeline: Pipeline) -> tuple[Predict, list[StepPath]]:
    """The compiled predict and what runs for each step (the step's own method where there is no
    arithmetic)."""
    paths, transforms = [], []
    for name, step in pipeline.steps[:-1]:
        transform = _transform_step(step)
        paths.append(
            StepPath(
                name, "passthrough" if _is_passthrough(step) else type(step).__name__, transform is not None
            )
        )
        transforms.append(transform if transform is not None else step.transform)
    name, estimator = pipeline.steps[-1]
    try:
        final = _predict_step(estimator)
    except ValueError as error:
        logger.info("step %s (%s) has no compiled form: %s", name, type(estimator).__name__, error)
        final = None
    paths.append(StepPath(name, type(estimator).__name__, final is not None))
    final_predict: Predict = final if final is not None else estimator.predict

    def predict(values: np.ndarray) -> np.ndarray:
        for transform in transforms:
            values = transform(values)
        return np.asarray(final_predict(values), dtype=np.float64)

    return predict, paths


def compile_pipeline(pipeline: Pipeline) -> Predict:
    """The pipeline's predict as plain array arithmetic (input: (n, 8) float64 in contract order); a step
    without a compiled form runs its own method (see :func:`step_paths`)."""
    return _compile_steps(pipeline)[0]


def step_paths(pipeline: Pipeline) -> list[StepPath]:
    """For each step of a fitted pipeline, whether ``compile_pipeline`` runs it as array arithmetic."""
    return _compile_steps(pipeline)[1]


def probe_rows(n: int = 2_048, seed: int = 0) -> pd.DataFrame:
    """Deterministic rows spread over the contract's plausible ranges (for checking a compiled path)."""
    rng = np.random.default_rng(seed)
    columns = {}
    for spec in FEATURES:
        low = spec.minimum + (1e-3 if spec.exclusive_minimum else 0.0)
        high = min(spec.maximum, spec.example * 4 if spec.example > 0 else spec.maximum)
        columns[spec.name] = rng.uniform(low, max(high, low + 1e-3), n)
    return pd.DataFrame(columns, columns=list(FEATURE_NAMES))


def fast_predict_or_default(
    pipeline: Pipeline, reference: pd.DataFrame | None = None
) -> tuple[Predict, bool]:
    """The compiled path if every step is compiled and it reproduces ``pipeline.predict`` exactly (to
    1e-9), else the pipeline's own. The flag says which (True: compiled).

    The check runs a batch big enough for the parallel kernels and a single row, so every kernel is
    compiled (or loaded from numba's cache) here, at load time, never on a request.
    """
    rows = probe_rows() if reference is None else reference.loc[:, list(FEATURE_NAMES)]

    def default(values: np.ndarray) -> np.ndarray:
        return np.asarray(
            pipeline.predict(pd.DataFrame(values, columns=list(FEATURE_NAMES))), dtype=np.float64
        )

    try:
        compiled, paths = _compile_steps(pipeline)
        library = [f"{path.name} ({path.kind})" for path in paths if not path.compiled]
        if library:
            logger.warning("no compiled form for step %s; serving with pipeline.predict", ", ".join(library))
            return default, False
        expected = np.asarray(pipeline.predict(rows), dtype=np.float64)
        got = compiled(rows.to_numpy(dtype=np.float64))
        if got.shape == expected.shape and np.allclose(got, expected, rtol=0, atol=1e-9):
            single = compiled(rows.to_numpy(dtype=np.float64)[:1])
            if np.allclose(single, expected[:1], rtol=0, atol=1e-9):
                return compiled, True
        logger.warning("compiled predict path differs from pipeline.predict; serving with pipeline.predict")
    except Exception:
        logger.warning("could not compile the pipeline; serving with pipeline.predict", exc_info=True)
    return default, False
