"""Transformers that live inside the logged model pipeline, so serving applies exactly what training fitted.

Outlier rule (fitted on the training split only, applied identically when serving): every heavy-tailed
column of the contract (``clip_outliers=True``: AveRooms, AveBedrms, Population, AveOccup) is clipped to
the [q_low, q_high] quantiles it has in the training data (default 0.1 % and 99.9 %). Rows are never
dropped, because a request can't be dropped either; the few extreme districts (e.g. AveOccup of 1,243)
are pulled to the edge of the usual range instead of dominating the scaler and the linear models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numba import njit
from scipy.spatial import cKDTree
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from housing.schema import FEATURE_NAMES, FEATURES
from housing.training.scoring import kfold_indices

CLIPPED_COLUMNS: tuple[str, ...] = tuple(spec.name for spec in FEATURES if spec.clip_outliers)


@njit(cache=True, nogil=True)
def _clip_kernel(values: np.ndarray, columns: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
    """Clip ``values[:, columns[j]]`` to ``[lower[j], upper[j]]`` in place, as np.clip does (NaN stays)."""
    for row in range(values.shape[0]):
        for j in range(columns.shape[0]):
            value = values[row, columns[j]]
            if value < lower[j]:
                values[row, columns[j]] = lower[j]
            elif value > upper[j]:
                values[row, columns[j]] = upper[j]


class OutlierClipper(TransformerMixin, BaseEstimator):
    """Clip the named columns to quantile bounds learned in ``fit``; other columns pass through unchanged."""

    def __init__(
        self, columns: Sequence[str] = CLIPPED_COLUMNS, quantiles: tuple[float, float] = (0.001, 0.999)
    ):
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
        return self.transform_array(validate_data(self, X, dtype=np.float64, reset=False))

    def transform_array(self, values: np.ndarray) -> np.ndarray:
        """``transform`` on an already validated float64 array (the serving fast path); returns a copy."""
        out = np.array(values, dtype=np.float64, order="C")  # one kernel call: a few rows cost ~1 µs
        _clip_kernel(out, self.column_indices_, self.lower_bounds_, self.upper_bounds_)
        return out

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        check_is_fitted(self, "lower_bounds_")
        return np.asarray(self.feature_names_in_, dtype=object)


def build_preprocessor(quantiles: tuple[float, float]) -> Pipeline:
    """The preprocessing every model shares: outlier clipping, then standard scaling (fitted on train
    only)."""
    return Pipeline([("outliers", OutlierClipper(quantiles=quantiles)), ("scaler", StandardScaler())])


# --- spatial feature engineering (inside the logged pipeline, raw 8 features in) ----------------------
LATITUDE, LONGITUDE = "Latitude", "Longitude"
KM_PER_DEGREE_LAT = 111.0
KM_PER_DEGREE_LON = 91.0
"""Kilometres per degree of longitude at California's mean latitude (~35.6 N)."""

IDW_OFFSET_KM = 0.5
"""Added to neighbour distances in the inverse-distance-weighted mean (districts can share a location)."""

CITIES: dict[str, tuple[float, float]] = {
    "los_angeles": (34.05, -118.24),
    "san_francisco": (37.77, -122.42),
    "san_diego": (32.72, -117.16),
    "san_jose": (37.34, -121.89),
    "sacramento": (38.58, -121.49),
}
"""Reference points for distance features (latitude, longitude)."""
CITY_LATITUDES = np.array([lat for lat, _ in CITIES.values()])
CITY_LONGITUDES = np.array([lon for _, lon in CITIES.values()])


FEATURE_INDEX: dict[str, int] = {name: index for index, name in enumerate(FEATURE_NAMES)}
"""Column of each raw feature; the engineered features are appended after the 8 raw ones."""


def _positions_km(values: np.ndarray) -> np.ndarray:
    """Approximate planar positions (km) from latitude/longitude, for nearest-neighbour search."""
    return np.column_stack(
        [
            values[:, FEATURE_INDEX[LATITUDE]] * KM_PER_DEGREE_LAT,
            values[:, FEATURE_INDEX[LONGITUDE]] * KM_PER_DEGREE_LON,
        ]
    )


def _input_names(estimator: BaseEstimator, input_features: Sequence[str] | None) -> list[str]:
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
        return self.transform_array(validate_data(self, X, dtype=np.float64, reset=False))

    def transform_array(self, values: np.ndarray) -> np.ndarray:
        """``transform`` on an already validated float64 array (the serving fast path)."""
        theta = np.deg2rad(np.asarray(self.angles, dtype=np.float64))
        out = np.empty(
            (values.shape[0], values.shape[1] + 2 * len(theta) + len(CITIES) + 4), dtype=np.float64
        )
        _spatial_kernel(
            np.ascontiguousarray(values), np.cos(theta), np.sin(theta), CITY_LATITUDES, CITY_LONGITUDES, out
        )
        return out

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        check_is_fitted(self, "n_outputs_")
        names = _input_names(self, input_features)
        for angle in self.angles:
            names += [f"rot{angle}_x", f"rot{angle}_y"]
        names += [f"km_to_{city}" for city in CITIES]
        names += ["rooms_per_person", "bedroom_share", "households", "income_x_occupancy"]
        return np.asarray(names, dtype=object)


def _reference_mask(reference_rows: np.ndarray | None, rows: int) -> np.ndarray:
    """The reference rows as a boolean mask (every row when None)."""
    if reference_rows is None:
        return np.ones(rows, dtype=bool)
    mask = np.asarray(reference_rows, dtype=bool)
    if mask.shape != (rows,):
        raise ValueError(f"reference_rows has shape {mask.shape}; expected ({rows},)")
    return mask


class NeighborTargetEncoder(TransformerMixin, BaseEstimator):
    """Append, for each row, the mean target of its k nearest training districts (for several k), the
    distance to the k-th one, its income relative to those neighbours, and the spread and the
    inverse-distance-weighted mean of the ``spread_k`` nearest targets.

    Target-based, hence leak-proof by construction: ``fit_transform`` (what a Pipeline calls on the
    training rows) gives every training row values computed *out of fold*, from neighbours in the other
    folds only, so no row ever sees its own target; ``transform`` (test rows, served requests) uses all
    training rows, which never include the row being predicted. Only training rows are ever stored.

    ``reference_rows`` (a fit parameter: ``neighbors__reference_rows``) names the rows whose targets the
    encoder may learn: a retrain passes the training split's rows, so labelled traffic, which a labeller
    sends, is encoded from the reference districts' targets but never becomes a neighbour target itself. A
    few dozen invented districts labelled at will in one place then cannot move that place's neighbour means.
    """

    def __init__(
        self, ks: Sequence[int] = (5, 20, 60), spread_k: int = 20, folds: int = 5, random_state: int = 42
    ):
        self.ks = ks
        self.spread_k = spread_k
        self.folds = folds
        self.random_state = random_state

    def fit(
        self, X: np.ndarray, y: np.ndarray, reference_rows: np.ndarray | None = None
    ) -> NeighborTargetEncoder:
        values = validate_data(self, X, dtype=np.float64, reset=True)
        reference = _reference_mask(reference_rows, len(values))
        needed = max(*self.ks, self.spread_k) * self.folds // (self.folds - 1) + 1
        if int(reference.sum()) < needed:
            raise ValueError(
                f"NeighborTargetEncoder needs at least {needed} reference rows, got {int(reference.sum())}"
            )
        self.positions_ = _positions_km(values[reference])
        self.targets_ = np.asarray(y, dtype=np.float64)[reference]
        self.incomes_ = values[reference, FEATURE_INDEX["MedInc"]].copy()
        self.tree_ = cKDTree(self.positions_)
        return self

    def fit_transform(
        self,
        X: np.ndarray,
        y: np.ndarray | None = None,
        reference_rows: np.ndarray | None = None,
        **fit_params: object,
    ) -> np.ndarray:
        if y is None:
            raise ValueError("NeighborTargetEncoder needs the target")
        self.fit(X, y, reference_rows)
        values = validate_data(self, X, dtype=np.float64, reset=False)
        reference = _reference_mask(reference_rows, len(values))
        encoded = np.empty((len(values), values.shape[1] + self._n_outputs()), dtype=np.float64)
        positions = np.flatnonzero(reference)  # row number of each stored reference row
        for fold_train, fold_rows in kfold_indices(len(self.targets_), self.folds, self.random_state):
            tree = cKDTree(self.positions_[fold_train])
            encoded[positions[fold_rows]] = self._encode(
                values[positions[fold_rows]], tree, self.targets_[fold_train], self.incomes_[fold_train]
            )
        if not reference.all():  # the other rows see every reference row, never themselves
            encoded[~reference] = self.transform_array(values[~reference])
        return encoded

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "tree_")
        return self.transform_array(validate_data(self, X, dtype=np.float64, reset=False))

    def transform_array(self, values: np.ndarray) -> np.ndarray:
        """``transform`` on an already validated float64 array (the serving fast path)."""
        return self._encode(values, self.tree_, self.targets_, self.incomes_)

    def __getstate__(self) -> dict[str, object]:
        # The KD-tree is rebuilt from the stored positions on load, so the saved model holds plain arrays
        # only.
        state = dict(self.__dict__)
        state.pop("tree_", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if "positions_" in state:
            self.tree_ = cKDTree(self.positions_)

    def _n_outputs(self) -> int:
        """Number of neighbour columns appended to the input columns."""
        return 3 * len(self.ks) + 2

    def _encode(
        self, values: np.ndarray, tree: cKDTree, targets: np.ndarray, incomes: np.ndarray
    ) -> np.ndarray:
        """The raw columns followed by the neighbour columns (see get_feature_names_out)."""
        ks = np.asarray(self.ks, dtype=np.int64)
        workers = -1 if len(values) >= 2_000 else 1  # big batches: every core
        distances, neighbours = tree.query(
            _positions_km(values), k=int(max(ks.max(), self.spread_k)), workers=workers
        )
        out = np.empty((values.shape[0], values.shape[1] + self._n_outputs()), dtype=np.float64)
        _neighbour_kernel(
            np.ascontiguousarray(values), distances, neighbours, targets, incomes, ks, self.spread_k, out
        )
        return out

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        check_is_fitted(self, "tree_")
        names = _input_names(self, input_features)
        for k in self.ks:
            names += [f"neighbor{k}_target_mean", f"neighbor{k}_km", f"income_vs_neighbor{k}"]
        names += [f"neighbor{self.spread_k}_target_std", f"neighbor{self.spread_k}_target_idw_mean"]
        return np.asarray(names, dtype=object)


# --- compiled kernels: one pass per row, used identically by training (transform) and serving ---------
_LAT, _LON = FEATURE_INDEX[LATITUDE], FEATURE_INDEX[LONGITUDE]
_INCOME, _ROOMS, _BEDROOMS = FEATURE_INDEX["MedInc"], FEATURE_INDEX["AveRooms"], FEATURE_INDEX["AveBedrms"]
_POPULATION, _OCCUPANCY = FEATURE_INDEX["Population"], FEATURE_INDEX["AveOccup"]


@njit(cache=True, nogil=True)
def _spatial_kernel(values, cos_t, sin_t, city_lat, city_lon, out):
    n_rows, n_in = values.shape
    for r in range(n_rows):
        for j in range(n_in):
            out[r, j] = values[r, j]
        lat, lon = values[r, _LAT], values[r, _LON]
        c = n_in
        for a in range(cos_t.shape[0]):
            out[r, c] = lon * cos_t[a] + lat * sin_t[a]
            out[r, c + 1] = lat * cos_t[a] - lon * sin_t[a]
            c += 2
        for q in range(city_lat.shape[0]):
            out[r, c] = math.hypot(
                (lat - city_lat[q]) * KM_PER_DEGREE_LAT, (lon - city_lon[q]) * KM_PER_DEGREE_LON
            )
            c += 1
        out[r, c] = values[r, _ROOMS] / values[r, _OCCUPANCY]
        out[r, c + 1] = values[r, _BEDROOMS] / values[r, _ROOMS]
        out[r, c + 2] = values[r, _POPULATION] / values[r, _OCCUPANCY]
        out[r, c + 3] = values[r, _INCOME] * values[r, _OCCUPANCY]


@njit(cache=True, nogil=True)
def _neighbour_kernel(values, distances, neighbours, targets, incomes, ks, spread_k, out):
    n_rows, n_in = values.shape
    for r in range(n_rows):
        for j in range(n_in):
            out[r, j] = values[r, j]
        c = n_in
        for k in ks:
            target_sum = 0.0
            income_sum = 0.0
            for j in range(k):
                target_sum += targets[neighbours[r, j]]
                income_sum += incomes[neighbours[r, j]]
            out[r, c] = target_sum / k
            out[r, c + 1] = distances[r, k - 1]
            out[r, c + 2] = values[r, _INCOME] / (income_sum / k)
            c += 3
        mean = 0.0
        for j in range(spread_k):
            mean += targets[neighbours[r, j]]
        mean /= spread_k
        squares = 0.0
        weighted = 0.0
        weights = 0.0
        for j in range(spread_k):
            target = targets[neighbours[r, j]]
            squares += (target - mean) ** 2
            weight = 1.0 / (distances[r, j] + IDW_OFFSET_KM)
            weighted += weight * target
            weights += weight
        out[r, c] = math.sqrt(squares / spread_k)
        out[r, c + 1] = weighted / weights
