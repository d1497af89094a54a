"""preprocess.py prints the EDA, writes the three plots and the inspection-only steps."""

from __future__ import annotations

import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from housing.data.artifacts import load_json, load_pickle
from housing.registry.versions import load_model_version

NAME = "CaliforniaHousing"


SQLITE = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""The promise does not depend on the tracking backend: the SQLite pipeline run only."""


@SQLITE
def test_preprocess_prints_the_eda_and_writes_the_plots_and_the_inspection_steps(pipeline_run):
    frame = pd.read_csv(pipeline_run.artifacts_dir / "data" / "california_housing.csv")
    out = pipeline_run.outputs["preprocess.py"].stdout
    titles = re.findall(r"^== (.+) ==$", out, flags=re.MULTILINE)
    assert titles == ["First rows", "Shape", "Data types", "Missing values", "Statistics"]
    sections = dict(zip(titles, re.split(r"^== .+ ==$", out, flags=re.MULTILINE)[1:], strict=True))
    assert (
        f"{frame['MedInc'].iloc[0]:.4f}" in sections["First rows"]
        and len(sections["First rows"].strip().splitlines()) == 6
    )
    assert (
        sections["Shape"].strip()
        == f"{len(frame):,} rows x {frame.shape[1]} columns"
        == "20,640 rows x 9 columns"
    )
    assert all(
        re.search(rf"^{name}\s+float64$", sections["Data types"], flags=re.MULTILINE)
        for name in frame.columns
    )
    assert all(
        re.search(rf"^{name}\s+0$", sections["Missing values"], flags=re.MULTILINE) for name in frame.columns
    )
    for (
        name
    ) in frame.columns:  # count, mean, std, min, quartiles, max of every column, as pandas computes them
        line = next(line for line in sections["Statistics"].splitlines() if line.startswith(f"{name} "))
        figures = [float(value) for value in line.split()[1:]]
        np.testing.assert_allclose(figures, frame[name].describe().to_numpy(), rtol=1e-5)
    assert "split 20,640 rows into 16,512 train / 4,128 test (random_state 42)" in out

    images = {}
    for plot in ("target_distribution", "correlation_matrix", "features_distribution"):
        image = matplotlib.image.imread(pipeline_run.artifacts_dir / "plots" / f"{plot}.png")
        assert image.shape[0] > 250 and image.shape[1] > 400 and image.std() > 0.05, (
            plot,
            image.shape,
        )  # a drawn figure
        images[plot] = image
    assert (
        images["features_distribution"].shape[1] > 1.5 * images["target_distribution"].shape[1]
    )  # 14 inches wide, 8 plots

    split_dir = pipeline_run.artifacts_dir / "split"
    record = load_json(split_dir / "split.json")
    manifest = load_json(pipeline_run.artifacts_dir / "data" / "manifest.json")
    assert record == {
        **record,
        "random_state": 42,
        "test_size": 0.2,
        "train_rows": 16_512,
        "test_rows": 4_128,
        "dataset_sha256": manifest["sha256"],
    }
    client = MlflowClient(pipeline_run.tracking_uri)
    linear = next(
        v
        for v in client.search_model_versions(f"name = '{NAME}'")
        if v.tags["candidate"] == "linear_regression"
    )
    pipeline = load_model_version(client, NAME, linear.version)
    outliers, scaler = load_pickle(split_dir / "outliers.pkl"), load_pickle(split_dir / "scaler.pkl")
    np.testing.assert_array_equal(outliers.lower_bounds_, pipeline.named_steps["outliers"].lower_bounds_)
    np.testing.assert_array_equal(outliers.upper_bounds_, pipeline.named_steps["outliers"].upper_bounds_)
    np.testing.assert_array_equal(scaler.mean_, pipeline.named_steps["scaler"].mean_)
    np.testing.assert_array_equal(scaler.scale_, pipeline.named_steps["scaler"].scale_)
