"""The compiled tree kernels reproduce LightGBM's own predictions exactly."""

import lightgbm as lgb
import numpy as np
import pytest

from housing.trees import PARALLEL_MIN_ROWS, flatten_lightgbm


def fitted_booster(rows: int = 600, nan_share: float = 0.0, zero_as_missing: bool = False) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, 6))
    y = x[:, 0] * 2 + np.sin(x[:, 1]) + rng.normal(scale=0.1, size=rows)
    if nan_share:
        x[rng.random(x.shape) < nan_share] = np.nan
    if zero_as_missing:
        x[rng.random(x.shape) < 0.1] = 0.0
    params = {"objective": "regression", "num_leaves": 15, "max_depth": 6, "verbose": -1, "zero_as_missing": zero_as_missing}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=40), x


@pytest.mark.parametrize("rows", [1, 3, 4, 17, PARALLEL_MIN_ROWS + 5])
def test_every_kernel_matches_lightgbm(rows):
    booster, _ = fitted_booster()
    probe = np.random.default_rng(2).normal(size=(rows, 6))
    assert np.array_equal(flatten_lightgbm(booster).predict(probe), booster.predict(probe))


@pytest.mark.parametrize(("nan_share", "zero_as_missing"), [(0.2, False), (0.0, True)])
def test_missing_values_follow_lightgbm(nan_share, zero_as_missing):
    booster, x = fitted_booster(nan_share=nan_share, zero_as_missing=zero_as_missing)
    assert np.array_equal(flatten_lightgbm(booster).predict(x[:50]), booster.predict(x[:50]))


def test_wrong_shape_and_unsupported_objective_are_refused():
    booster, _ = fitted_booster()
    with pytest.raises(ValueError, match="expected"):
        flatten_lightgbm(booster).predict(np.zeros((2, 5)))
    rng = np.random.default_rng(3)
    classifier = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(rng.normal(size=(200, 3)), rng.integers(0, 2, 200)), 5)
    with pytest.raises(ValueError, match="unsupported LightGBM objective"):
        flatten_lightgbm(classifier)
