"""Regression scoring, defined once: R², RMSE, MAE and MSE, the order of "better", and K-fold splits."""

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


def regression_metrics(y_true: np.ndarray | pd.Series, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> dict[str, float]:
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
