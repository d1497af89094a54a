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
from sklearn.model_selection import KFold
from sklearn.neighbors import KDTree
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from housing.schema import FEATURE_NAMES, FEATURES

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


# --- spatial feature engineering (inside the logged pipeline, raw 8 features in) ----------------------
LATITUDE, LONGITUDE = "Latitude", "Longitude"
KM_PER_DEGREE_LAT = 111.0
KM_PER_DEGREE_LON = 91.0
"""Kilometres per degree of longitude at California's mean latitude (~35.6 N)."""

CITIES: dict[str, tuple[float, float]] = {
    "los_angeles": (34.05, -118.24),
    "san_francisco": (37.77, -122.42),
    "san_diego": (32.72, -117.16),
    "san_jose": (37.34, -121.89),
    "sacramento": (38.58, -121.49),
}
"""Reference points for distance features (latitude, longitude)."""


FEATURE_INDEX: dict[str, int] = {name: index for index, name in enumerate(FEATURE_NAMES)}
"""Column of each raw feature; the engineered features are appended after the 8 raw ones."""


def _positions_km(values: np.ndarray) -> np.ndarray:
    """Approximate planar positions (km) from latitude/longitude, for nearest-neighbour search."""
    return np.column_stack(
        [values[:, FEATURE_INDEX[LATITUDE]] * KM_PER_DEGREE_LAT, values[:, FEATURE_INDEX[LONGITUDE]] * KM_PER_DEGREE_LON]
    )


def _input_names(estimator: BaseEstimator, input_features: object) -> list[str]:
    if input_features is not None:
        return [str(name) for name in input_features]
    if hasattr(estimator, "feature_names_in_"):
        return [str(name) for name in estimator.feature_names_in_]
    return [*FEATURE_NAMES, *(f"x{i}" for i in range(len(FEATURE_NAMES), estimator.n_features_in_))]


class SpatialFeatures(TransformerMixin, BaseEstimator):
    """Add stateless engineered features to the raw 8: rotated coordinates, distances to the big cities,
    and household ratios. Uses no target, so it is the same at fit and at serve time."""

    def __init__(self, angles: Sequence[float] = (15, 30, 45, 60, 75)):
        self.angles = angles

    def fit(self, X: np.ndarray, y: object = None) -> SpatialFeatures:
        validate_data(self, X, dtype=np.float64, reset=True)
        self.n_outputs_ = self.n_features_in_ + 2 * len(self.angles) + len(CITIES) + 4
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "n_outputs_")
        values = validate_data(self, X, dtype=np.float64, reset=False)
        i = FEATURE_INDEX
        lat, lon = values[:, i[LATITUDE]], values[:, i[LONGITUDE]]
        columns = [values]
        for angle in self.angles:
            theta = np.deg2rad(angle)
            columns.append((lon * np.cos(theta) + lat * np.sin(theta))[:, None])
            columns.append((lat * np.cos(theta) - lon * np.sin(theta))[:, None])
        for city_lat, city_lon in CITIES.values():
            distance = np.hypot((lat - city_lat) * KM_PER_DEGREE_LAT, (lon - city_lon) * KM_PER_DEGREE_LON)
            columns.append(distance[:, None])
        columns.append((values[:, i["AveRooms"]] / values[:, i["AveOccup"]])[:, None])
        columns.append((values[:, i["AveBedrms"]] / values[:, i["AveRooms"]])[:, None])
        columns.append((values[:, i["Population"]] / values[:, i["AveOccup"]])[:, None])
        columns.append((values[:, i["MedInc"]] * values[:, i["AveOccup"]])[:, None])
        return np.hstack(columns)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "n_outputs_")
        names = _input_names(self, input_features)
        for angle in self.angles:
            names += [f"rot{angle}_x", f"rot{angle}_y"]
        names += [f"km_to_{city}" for city in CITIES]
        names += ["rooms_per_person", "bedroom_share", "households", "income_x_occupancy"]
        return np.asarray(names, dtype=object)


class NeighborTargetEncoder(TransformerMixin, BaseEstimator):
    """Append, for each row, the mean target of its k nearest training districts (for several k), the
    distance to the k-th one, and its income relative to those neighbours.

    Target-based, hence leak-proof by construction: ``fit_transform`` (what a Pipeline calls on the
    training rows) gives every training row values computed *out of fold*, from neighbours in the other
    folds only, so no row ever sees its own target; ``transform`` (test rows, served requests) uses all
    training rows, which never include the row being predicted. Only training rows are ever stored.
    """

    def __init__(self, ks: Sequence[int] = (5, 20, 60), folds: int = 5, random_state: int = 42):
        self.ks = ks
        self.folds = folds
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> NeighborTargetEncoder:
        values = validate_data(self, X, dtype=np.float64, reset=True)
        self.positions_ = _positions_km(values)
        self.targets_ = np.asarray(y, dtype=np.float64)
        self.incomes_ = values[:, FEATURE_INDEX["MedInc"]].copy()
        self.tree_ = KDTree(self.positions_)
        return self

    def fit_transform(self, X: np.ndarray, y: np.ndarray | None = None, **fit_params: object) -> np.ndarray:
        if y is None:
            raise ValueError("NeighborTargetEncoder needs the target")
        self.fit(X, y)
        values = validate_data(self, X, dtype=np.float64, reset=False)
        encoded = np.empty((len(values), self._n_outputs()), dtype=np.float64)
        splitter = KFold(n_splits=self.folds, shuffle=True, random_state=self.random_state)
        for fold_train, fold_rows in splitter.split(values):
            tree = KDTree(self.positions_[fold_train])
            encoded[fold_rows] = self._encode(values[fold_rows], tree, self.targets_[fold_train], self.incomes_[fold_train])
        return np.hstack([values, encoded])

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "tree_")
        values = validate_data(self, X, dtype=np.float64, reset=False)
        return np.hstack([values, self._encode(values, self.tree_, self.targets_, self.incomes_)])

    def __getstate__(self) -> dict[str, object]:
        # The KD-tree is rebuilt from the stored positions on load, so the saved model holds plain arrays only.
        state = dict(self.__dict__)
        state.pop("tree_", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if "positions_" in state:
            self.tree_ = KDTree(self.positions_)

    def _n_outputs(self) -> int:
        return 3 * len(self.ks)

    def _encode(self, values: np.ndarray, tree: KDTree, targets: np.ndarray, incomes: np.ndarray) -> np.ndarray:
        k_max = max(self.ks)
        distances, neighbours = tree.query(_positions_km(values), k=k_max)
        columns = []
        for k in self.ks:
            columns.append(targets[neighbours[:, :k]].mean(axis=1))
            columns.append(distances[:, k - 1])
            columns.append(values[:, FEATURE_INDEX["MedInc"]] / incomes[neighbours[:, :k]].mean(axis=1))
        return np.column_stack(columns)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "tree_")
        names = _input_names(self, input_features)
        for k in self.ks:
            names += [f"neighbor{k}_target_mean", f"neighbor{k}_km", f"income_vs_neighbor{k}"]
        return np.asarray(names, dtype=object)
