"""A fast predict path for a fitted pipeline, proven equal to ``pipeline.predict`` before it is used.

scikit-learn re-validates the input at every step of a pipeline and LightGBM's scikit-learn wrapper
re-processes its parameters at every call: for a batch of a few rows that costs far more than the
arithmetic. ``compile_pipeline`` turns each fitted step into the same arithmetic on a float64 array
(the API validates the input once, against the feature contract). It only uses steps it knows; for
anything else it keeps the step's own method. Before the API serves with it, the compiled path must
reproduce ``pipeline.predict`` on real-looking rows, otherwise the pipeline's own predict is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from housing.features import NeighborTargetEncoder, OutlierClipper, SpatialFeatures
from housing.schema import FEATURE_NAMES, FEATURES
from housing.trees import flatten_lightgbm

logger = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


def _transform_step(step: Any) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(step, StandardScaler):
        mean = step.mean_ if step.with_mean else 0.0
        scale = step.scale_ if step.with_std else 1.0
        return lambda values: (values - mean) / scale
    if isinstance(step, (OutlierClipper, SpatialFeatures, NeighborTargetEncoder)):
        return step.transform_array
    transform: Callable[[np.ndarray], np.ndarray] = step.transform
    return transform


def _predict_step(step: Any) -> Predict:
    if isinstance(step, LGBMRegressor):
        return flatten_lightgbm(step.booster_).predict
    predict: Predict = step.predict
    return predict


def compile_pipeline(pipeline: Pipeline) -> Predict:
    """The pipeline's predict as plain array arithmetic (input: (n, 8) float64 in contract order)."""
    transforms = [_transform_step(step) for _, step in pipeline.steps[:-1]]
    final = _predict_step(pipeline.steps[-1][1])

    def predict(values: np.ndarray) -> np.ndarray:
        for transform in transforms:
            values = transform(values)
        return np.asarray(final(values), dtype=np.float64)

    return predict


def probe_rows(n: int = 2_048, seed: int = 0) -> pd.DataFrame:
    """Deterministic rows spread over the contract's plausible ranges (for checking a compiled path)."""
    rng = np.random.default_rng(seed)
    columns = {}
    for spec in FEATURES:
        low = spec.minimum + (1e-3 if spec.exclusive_minimum else 0.0)
        high = min(spec.maximum, spec.example * 4 if spec.example > 0 else spec.maximum)
        columns[spec.name] = rng.uniform(low, max(high, low + 1e-3), n)
    return pd.DataFrame(columns, columns=list(FEATURE_NAMES))


def fast_predict_or_default(pipeline: Pipeline, reference: pd.DataFrame | None = None) -> tuple[Predict, bool]:
    """The compiled path if it reproduces ``pipeline.predict`` exactly (to 1e-9), else the pipeline's own.

    The check runs a batch big enough for the parallel kernels and a single row, so every kernel is
    compiled (or loaded from numba's cache) here, at load time, never on a request.
    """
    rows = probe_rows() if reference is None else reference.loc[:, list(FEATURE_NAMES)]

    def default(values: np.ndarray) -> np.ndarray:
        return np.asarray(pipeline.predict(pd.DataFrame(values, columns=list(FEATURE_NAMES))), dtype=np.float64)

    try:
        compiled = compile_pipeline(pipeline)
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
