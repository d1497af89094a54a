"""Every registered candidate of the real pipeline run, whatever its family, is served by the compiled path.

What each test is evidence of:

- compiled path == ``pipeline.predict`` (every family): the compiled scaler formula, linear product and tree
  kernels reproduce the libraries' own predict (LightGBM's booster, scikit-learn's estimators). It is *not*
  evidence about the feature steps: for those both sides run the same numba kernels (``transform`` calls
  ``transform_array``), so the comparison would pass whatever they computed.
- the feature steps: the real model's fitted outlier rule, spatial features and neighbour columns equal their
  definitions (restated in tests/code/test_feature_definitions.py, which checks every column on synthetic
  data) on real districts, and the served prediction is the library's predict of those definitions.
- an unknown final step falls back to the pipeline's own predict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.neighbors import KNeighborsRegressor

from housing.data.artifacts import load_pickle
from housing.registry.versions import load_model_version
from housing.schema import FEATURE_NAMES
from housing.serving.compiled import compile_pipeline, fast_predict_or_default, probe_rows, step_paths
from tests.feature_definitions import (
    RAW_COLUMNS,
    assert_every_column_is_its_definition,
    clipped_by_definition,
    exactly_defined,
    neighbours_by_definition,
    spatial_by_definition,
)

pytestmark = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
FAMILIES = {
    "linear_regression",
    "random_forest",
    "gradient_boosting",
    "hist_gradient_boosting",
    "lightgbm_spatial",
}


@pytest.fixture(scope="module")
def registered(pipeline_run) -> dict[str, object]:
    client = MlflowClient(pipeline_run.tracking_uri)
    versions = {v.tags["candidate"]: v for v in client.search_model_versions("name = 'CaliforniaHousing'")}
    assert set(versions) == FAMILIES
    return {name: load_model_version(client, "CaliforniaHousing", v.version) for name, v in versions.items()}


@pytest.fixture(scope="module")
def x_test(pipeline_run) -> pd.DataFrame:
    return load_pickle(pipeline_run.artifacts_dir / "split" / "X_test.pkl").loc[:, list(FEATURE_NAMES)]


@pytest.fixture(scope="module")
def training_split(pipeline_run) -> tuple[np.ndarray, np.ndarray]:
    split_dir = pipeline_run.artifacts_dir / "split"
    x_train = load_pickle(split_dir / "X_train.pkl").loc[:, list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    return x_train, load_pickle(split_dir / "y_train.pkl").to_numpy(dtype=np.float64)


@pytest.mark.parametrize("candidate", sorted(FAMILIES))
def test_each_family_is_compiled_and_equal_to_its_pipeline(registered, x_test, candidate):
    pipeline = registered[candidate]
    assert all(step.compiled for step in step_paths(pipeline)), step_paths(pipeline)
    predict, verified = fast_predict_or_default(pipeline, reference=x_test)
    assert verified
    for rows in (x_test, probe_rows(), x_test.iloc[:1]):
        expected = np.asarray(pipeline.predict(rows), dtype=np.float64)
        np.testing.assert_allclose(predict(rows.to_numpy(dtype=np.float64)), expected, rtol=0, atol=1e-9)


def test_an_unknown_final_step_falls_back_to_the_pipelines_own_predict(registered, x_test):
    pipeline = registered["lightgbm_spatial"]
    features = pipeline[:-1].transform(x_test.iloc[:500])
    unknown = type(pipeline)(
        [*pipeline.steps[:-1], ("model", KNeighborsRegressor(5).fit(features, np.arange(500.0)))]
    )
    assert not step_paths(unknown)[-1].compiled
    predict, verified = fast_predict_or_default(unknown)
    assert not verified
    np.testing.assert_allclose(
        predict(x_test.iloc[:50].to_numpy(dtype=np.float64)), unknown.predict(x_test.iloc[:50]), rtol=0
    )


def test_the_served_feature_columns_are_their_definitions_on_real_districts(
    registered, x_test, training_split
):
    """The real spatial model's fitted feature steps, run as the compiled path runs them, against the
    definitions computed from the training split itself (not from anything the model stored)."""
    pipeline = registered["lightgbm_spatial"]
    clipper, spatial, neighbours = (
        pipeline.named_steps[name] for name in ("outliers", "spatial", "neighbors")
    )
    x_train, y_train = training_split
    rows = x_test.iloc[:300].to_numpy(dtype=np.float64)
    clipped = clipped_by_definition(x_train, rows, clipper.quantiles)
    clipped_rows = np.column_stack([clipped[name] for name in RAW_COLUMNS])
    spatial_columns = spatial_by_definition(clipped_rows, spatial.angles)
    lowest, highest = neighbours_by_definition(
        x_train, y_train, clipped_rows, neighbours.ks, neighbours.spread_k
    )
    served = rows
    for step in (clipper, spatial, neighbours):  # what the compiled path runs for the feature steps
        served = step.transform_array(served)
    names = pipeline[:3].get_feature_names_out()
    # Real districts share locations: where neighbours tie with the k-th nearest, a column lies between its
    # lowest and highest defined value; elsewhere (and for distances, always) it is one value.
    assert_every_column_is_its_definition(
        served, names, spatial_columns | lowest, spatial_columns | highest, rtol=1e-9
    )

    exact = exactly_defined(lowest, highest)
    assert exact.sum() >= 50, exact.sum()
    definition_features = np.column_stack([(spatial_columns | lowest)[str(name)] for name in names])[exact]
    library = pipeline.named_steps["model"].predict(
        pipeline.named_steps["scaler"].transform(definition_features)
    )
    np.testing.assert_allclose(compile_pipeline(pipeline)(rows[exact]), library, rtol=0, atol=1e-9)
