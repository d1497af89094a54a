"""Exploratory summary of the dataset: the original report's printout and its three plots."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from housing.data.artifacts import atomic_path
from housing.schema import FEATURES, TARGET


def describe_dataset(frame: pd.DataFrame) -> str:
    """The original report's EDA printout: head, shape, dtypes, missing values and ``describe()``."""
    buffer = io.StringIO()
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        sections = [
            ("First rows", frame.head()),
            ("Shape", f"{frame.shape[0]:,} rows x {frame.shape[1]} columns"),
            ("Data types", frame.dtypes),
            ("Missing values", frame.isna().sum()),
            ("Statistics", frame.describe().T),
        ]
        for title, body in sections:
            buffer.write(f"\n== {title} ==\n{body}\n")
    return buffer.getvalue()


def save_figure(figure: Figure, path: Path) -> None:
    """Save a figure as PNG atomically."""
    with atomic_path(path) as tmp_path:
        figure.savefig(tmp_path, format="png", dpi=100, bbox_inches="tight")


def plot_target_distribution(frame: pd.DataFrame) -> Figure:
    """Histogram of the target."""
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    axes.hist(frame[TARGET.name], bins=60, color="steelblue", edgecolor="white")
    axes.set_xlabel(f"{TARGET.name} ({TARGET.unit})")
    axes.set_ylabel("districts")
    axes.set_title("Distribution of the median house value")
    return figure


def plot_correlation_matrix(frame: pd.DataFrame) -> Figure:
    """Annotated Pearson correlation heatmap of every column."""
    corr = frame.corr()
    figure = Figure(figsize=(8, 7))
    axes = figure.subplots()
    image = axes.imshow(corr.to_numpy(), cmap="coolwarm", vmin=-1, vmax=1)
    axes.set_xticks(range(len(corr)), corr.columns, rotation=45, ha="right")
    axes.set_yticks(range(len(corr)), corr.columns)
    for (i, j), value in np.ndenumerate(corr.to_numpy()):
        axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8)
    axes.set_title("Correlation matrix")
    return figure


def plot_features_distribution(frame: pd.DataFrame) -> Figure:
    """One histogram per input feature."""
    figure = Figure(figsize=(14, 7))
    grid = figure.subplots(2, 4)
    for axes, spec in zip(grid.ravel(), FEATURES, strict=True):
        axes.hist(frame[spec.name], bins=50, color="seagreen", edgecolor="white")
        axes.set_title(spec.name)
        axes.set_xlabel(spec.unit, fontsize=8)
    figure.suptitle("Feature distributions")
    figure.tight_layout()
    return figure


def save_eda_plots(frame: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """Write the three EDA plots under ``plots_dir`` and return their paths."""
    plots = {
        "target_distribution.png": plot_target_distribution,
        "correlation_matrix.png": plot_correlation_matrix,
        "features_distribution.png": plot_features_distribution,
    }
    paths = []
    for file_name, plot in plots.items():
        path = plots_dir / file_name
        save_figure(plot(frame), path)
        paths.append(path)
    return paths
