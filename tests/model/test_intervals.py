"""The production version's prediction interval on the real test split: the rows its calibration never saw
(it is calibrated on the training rows' out-of-fold predictions)."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from housing.data.artifacts import load_pickle
from housing.monitoring.segments import segment_masks
from housing.schema import FEATURE_NAMES, OBSERVED_TARGET_RANGE
from housing.serving.intervals import ServedInterval, serve_interval
from housing.training.intervals import IntervalCalibration, load_interval

pytestmark = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def calibration(pipeline_run) -> IntervalCalibration:
    client = MlflowClient(pipeline_run.tracking_uri)
    version = client.get_model_version_by_alias("CaliforniaHousing", "production")
    found = load_interval(client, version)
    assert found is not None, "the production version was registered without its interval"
    return found


@pytest.fixture(scope="module")
def served_on_test_split(pipeline_run, calibration):
    split_dir = pipeline_run.artifacts_dir / "split"
    x_test = load_pickle(split_dir / "X_test.pkl").loc[:, list(FEATURE_NAMES)]
    truth = load_pickle(split_dir / "y_test.pkl").to_numpy(dtype=np.float64)
    predicted = np.asarray(pipeline_run.load_version().predict(x_test), dtype=np.float64)
    served = serve_interval(calibration, price_index=1.0)
    low, high = served.bounds(x_test.to_numpy(dtype=np.float64), predicted)
    return served, x_test, truth, predicted, low, high


def test_the_served_interval_is_the_quantile_models_own_prediction(calibration, served_on_test_split):
    served, x_test, _, predicted, low, high = served_on_test_split
    assert served.compiled, "the quantile models were not compiled"

    def library(model):
        return lambda rows: np.asarray(model.predict(rows), dtype=np.float64)

    by_library = ServedInterval(
        calibration, library(calibration.low_model), library(calibration.high_model), False
    )
    expected_low, expected_high = by_library.bounds(x_test.to_numpy(dtype=np.float64), predicted)
    np.testing.assert_allclose(low, expected_low, rtol=0, atol=1e-9)
    np.testing.assert_allclose(high, expected_high, rtol=0, atol=1e-9)


def test_the_interval_covers_its_level_of_unseen_districts(calibration, served_on_test_split):
    _, x_test, truth, predicted, low, high = served_on_test_split
    inside = (truth >= low) & (truth <= high)
    assert (low <= predicted).all() and (predicted <= high).all()
    floor, ceiling = OBSERVED_TARGET_RANGE  # the data's range, reached beyond only to hold the prediction
    assert (low >= np.minimum(floor, predicted)).all() and (high <= np.maximum(ceiling, predicted)).all()
    # 4,128 test rows: one standard error of a 90% coverage is 0.5 points; 3 points is 6 of them
    assert abs(inside.mean() - calibration.level) <= 0.03, inside.mean()
    for name, mask in segment_masks(x_test).items():
        if mask.sum() >= 300:  # a segment's coverage holds too (Mondrian corrections), not only the mean's
            assert inside[mask].mean() >= calibration.level - 0.06, (name, inside[mask].mean())


def test_the_interval_adapts_its_width_to_the_district(served_on_test_split):
    """Narrower on average than a constant-width range reaching the same coverage: the width follows how
    hard each district is, it is not one number."""
    _, _, truth, predicted, low, high = served_on_test_split
    coverage = ((truth >= low) & (truth <= high)).mean()
    constant_width = 2 * np.quantile(np.abs(truth - predicted), coverage)
    widths = high - low
    assert widths.mean() < 0.95 * constant_width, (widths.mean(), constant_width)
    assert np.quantile(widths, 0.9) > 2 * np.quantile(widths, 0.1)
