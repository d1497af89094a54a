"""The compiled predict path equals pipeline.predict, and anything that doesn't falls back."""

import numpy as np
import pandas as pd
import pytest

from housing.candidates import build_pipeline, load_candidate_specs
from housing.config import get_settings
from housing.features import SpatialFeatures
from housing.inference import compile_pipeline, fast_predict_or_default, probe_rows
from housing.schema import FEATURE_NAMES
from tests.code.test_data import tiny_dataset


def training_frame(rows: int = 800) -> tuple[pd.DataFrame, pd.Series]:
    frame = tiny_dataset(rows)
    rng = np.random.default_rng(5)
    frame["Latitude"] = rng.uniform(32.6, 41.9, rows)
    frame["Longitude"] = rng.uniform(-124.3, -114.4, rows)
    frame["AveOccup"] = rng.uniform(1, 6, rows)
    return frame.loc[:, list(FEATURE_NAMES)], frame["MedHouseVal"]


@pytest.mark.parametrize("name", [spec.name for spec in load_candidate_specs(get_settings().candidates_path)])
def test_compiled_path_equals_pipeline_predict(name):
    x, y = training_frame()
    spec = load_candidate_specs(get_settings().candidates_path, [name])[0]
    pipeline = build_pipeline(spec, outlier_quantiles=(0.01, 0.99), estimator_scale=0.05).fit(x, y)
    rows = probe_rows(300)
    compiled = compile_pipeline(pipeline)(rows.to_numpy())
    np.testing.assert_allclose(compiled, pipeline.predict(rows), rtol=0, atol=1e-9)
    predict, verified = fast_predict_or_default(pipeline)
    assert verified


class DriftingSpatial(SpatialFeatures):
    """A step whose sklearn transform differs from its fast path: the check must catch it."""

    def transform(self, X):
        return super().transform(X) + 1.0


def test_a_path_that_differs_is_not_used():
    x, y = training_frame()
    spec = load_candidate_specs(get_settings().candidates_path, ["lightgbm_spatial"])[0]
    pipeline = build_pipeline(spec, outlier_quantiles=(0.01, 0.99), estimator_scale=0.05)
    pipeline.steps[1] = ("spatial", DriftingSpatial())
    pipeline.fit(x, y)
    predict, verified = fast_predict_or_default(pipeline)
    assert not verified
    rows = probe_rows(20)
    np.testing.assert_array_equal(predict(rows.to_numpy()), pipeline.predict(rows))


def test_probe_rows_respect_the_contract():
    from housing.schema import validate_frame

    validate_frame(probe_rows(), require_target=False)
