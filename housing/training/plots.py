"""The figures a training run logs: predicted vs actual, residuals, feature importances."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.pipeline import Pipeline

from housing.schema import FEATURE_NAMES, TARGET


def plot_predicted_vs_actual(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Figure:
    """Scatter of predicted against actual values with the identity line."""
    figure = Figure(figsize=(6, 6))
    axes = figure.subplots()
    axes.scatter(y_true, y_pred, s=4, alpha=0.3)
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    axes.plot([low, high], [low, high], color="crimson", linewidth=1)
    axes.set_xlabel(f"actual {TARGET.name}")
    axes.set_ylabel(f"predicted {TARGET.name}")
    axes.set_title(title)
    return figure


def plot_residuals(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Figure:
    """Residuals against predictions, and their histogram."""
    residuals = y_true - y_pred
    figure = Figure(figsize=(11, 4.5))
    scatter, histogram = figure.subplots(1, 2)
    scatter.scatter(y_pred, residuals, s=4, alpha=0.3)
    scatter.axhline(0, color="crimson", linewidth=1)
    scatter.set_xlabel(f"predicted {TARGET.name}")
    scatter.set_ylabel("residual (actual - predicted)")
    histogram.hist(residuals, bins=60, color="slategray")
    histogram.set_xlabel("residual")
    figure.suptitle(title)
    return figure


def plot_importances(importances: pd.Series, title: str) -> Figure:
    """Horizontal bar chart of feature importances."""
    ordered = importances.sort_values()
    figure = Figure(figsize=(7, max(3.0, 0.3 * len(ordered))))
    axes = figure.subplots()
    axes.barh(ordered.index, ordered.to_numpy(), color="darkorange")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def feature_importances(pipeline: Pipeline) -> pd.Series | None:
    """The estimator's feature importances by input name of its step, or None if it has none."""
    estimator = pipeline.steps[-1][1]
    values = getattr(estimator, "feature_importances_", None)
    if values is None:
        return None
    names = pipeline[:-1].get_feature_names_out(list(FEATURE_NAMES))
    return pd.Series(np.asarray(values, dtype=float), index=[str(name) for name in names])
