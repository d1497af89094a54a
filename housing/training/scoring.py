"""Regression scoring, defined once: R², RMSE, MAE and MSE, the order of "better", K-fold splits, and the
percentile bootstrap every interval of the gates and the price index comes from."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import (
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    root_mean_squared_error,
)
from sklearn.model_selection import KFold


def regression_metrics(
    y_true: np.ndarray | pd.Series, y_pred: np.ndarray, sample_weight: np.ndarray | None = None
) -> dict[str, float]:
    """The project's one definition of r2, rmse, mae and mse (optionally weighted)."""
    return {
        "r2": float(r2_score(y_true, y_pred, sample_weight=sample_weight)),
        "rmse": float(root_mean_squared_error(y_true, y_pred, sample_weight=sample_weight)),
        "mae": float(mean_absolute_error(y_true, y_pred, sample_weight=sample_weight)),
        "mse": float(mean_squared_error(y_true, y_pred, sample_weight=sample_weight)),
    }


def rank_key(r2: float, rmse: float) -> tuple[float, float]:
    """Sort key, best first: higher R² wins; at equal R², lower RMSE wins."""
    return (-r2, rmse)


def best_first(scores: Mapping[str, float]) -> tuple[float, float]:
    """:func:`rank_key` of a metrics mapping with ``r2`` and ``rmse``."""
    return rank_key(scores["r2"], scores["rmse"])


def kfold_indices(rows: int, folds: int, random_state: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The project's K-fold split of ``rows`` rows: shuffled, seeded, (train rows, held-out rows) per fold."""
    return list(KFold(n_splits=folds, shuffle=True, random_state=random_state).split(np.empty((rows, 1))))


def ratio_bootstrap(
    numerator: np.ndarray,
    denominator: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int = 0,
    chunk: int = 100,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(numerator) / sum(denominator)``: rows resampled with replacement
    ``samples`` times (the same rows for both), ``chunk`` resamples at a time to bound memory."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ratios: list[np.ndarray] = []
    for start in range(0, samples, chunk):
        picks = rng.integers(0, len(numerator), size=(min(chunk, samples - start), len(numerator)))
        ratios.append(numerator[picks].sum(axis=1) / denominator[picks].sum(axis=1))
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(np.concatenate(ratios), [tail, 1.0 - tail])
    return float(low), float(high)
