"""Transformers that live inside the logged model pipeline, so serving applies exactly what training fitted.

Outlier rule (fitted on the training split only, applied identically when serving): every heavy-tailed
column of the contract (``clip_outliers=True``: AveRooms, AveBedrms, Population, AveOccup) is clipped to
the [q_low, q_high] quantiles it has in the training data (default 0.1 % and 99.9 %). Rows are never
dropped, because a request can't be dropped either; the few extreme districts (e.g. AveOccup of 1,243)
are pulled to the edge of the usual range instead of dominating the scaler and the linear models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from housing.schema import FEATURES

CLIPPED_COLUMNS: tuple[str, ...] = tuple(spec.name for spec in FEATURES if spec.clip_outliers)


class OutlierClipper(TransformerMixin, BaseEstimator):
    """Clip the named columns to quantile bounds learned in ``fit``; other columns pass through unchanged."""

    def __init__(self, columns: Sequence[str] = CLIPPED_COLUMNS, quantiles: tuple[float, float] = (0.001, 0.999)):
        self.columns = columns
        self.quantiles = quantiles

    def fit(self, X: pd.DataFrame, y: object = None) -> OutlierClipper:
        values = validate_data(self, X, dtype=np.float64, reset=True)
        names = list(self.feature_names_in_)
        self.column_indices_ = np.array([names.index(name) for name in self.columns], dtype=np.int64)
        low, high = self.quantiles
        bounds = np.quantile(values[:, self.column_indices_], [low, high], axis=0)
        self.lower_bounds_, self.upper_bounds_ = bounds[0], bounds[1]
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self, "lower_bounds_")
        values = validate_data(self, X, dtype=np.float64, reset=False, copy=True)
        idx = self.column_indices_
        values[:, idx] = np.clip(values[:, idx], self.lower_bounds_, self.upper_bounds_)
        return values

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "lower_bounds_")
        return np.asarray(self.feature_names_in_, dtype=object)


def build_preprocessor(quantiles: tuple[float, float]) -> Pipeline:
    """The preprocessing every model shares: outlier clipping, then standard scaling (fitted on train only)."""
    return Pipeline([("outliers", OutlierClipper(quantiles=quantiles)), ("scaler", StandardScaler())])
