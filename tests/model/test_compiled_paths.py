"""Every registered candidate of the real pipeline run, whatever its family, is served by the compiled path, and it
equals the pipeline's own predict on the real test split and on the probe rows; an unknown step falls back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.neighbors import KNeighborsRegressor

from housing.artifacts import load_pickle
from housing.inference import fast_predict_or_default, probe_rows, step_paths
from housing.registry import load_model_version
from housing.schema import FEATURE_NAMES

pytestmark = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
FAMILIES = {"linear_regression", "random_forest", "gradient_boosting", "hist_gradient_boosting", "lightgbm_spatial"}


@pytest.fixture(scope="module")
def registered(pipeline_run) -> dict[str, object]:
    client = MlflowClient(pipeline_run.tracking_uri)
    versions = {v.tags["candidate"]: v for v in client.search_model_versions("name = 'CaliforniaHousing'")}
    assert set(versions) == FAMILIES
    return {name: load_model_version(client, "CaliforniaHousing", v.version) for name, v in versions.items()}


@pytest.fixture(scope="module")
def x_test(pipeline_run) -> pd.DataFrame:
    return load_pickle(pipeline_run.artifacts_dir / "split" / "X_test.pkl").loc[:, list(FEATURE_NAMES)]


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
    unknown = type(pipeline)([*pipeline.steps[:-1], ("model", KNeighborsRegressor(5).fit(features, np.arange(500.0)))])
    assert not step_paths(unknown)[-1].compiled
    predict, verified = fast_predict_or_default(unknown)
    assert not verified
    np.testing.assert_allclose(predict(x_test.iloc[:50].to_numpy(dtype=np.float64)), unknown.predict(x_test.iloc[:50]), rtol=0)
