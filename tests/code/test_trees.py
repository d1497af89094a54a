"""The compiled tree kernels reproduce LightGBM's own predictions exactly."""

from dataclasses import replace

import lightgbm as lgb
import numpy as np
import pytest

from housing.serving.trees import INPUT_ALLOW_NAN, INPUT_FINITE, PARALLEL_MIN_ROWS, flatten_lightgbm


def fitted_booster(
    rows: int = 600, nan_share: float = 0.0, zero_as_missing: bool = False
) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, 6))
    y = x[:, 0] * 2 + np.sin(x[:, 1]) + rng.normal(scale=0.1, size=rows)
    if nan_share:
        x[rng.random(x.shape) < nan_share] = np.nan
    if zero_as_missing:
        x[rng.random(x.shape) < 0.1] = 0.0
    # one thread: LightGBM's OpenMP pool takes seconds to start on a busy CI machine
    params = {
        "objective": "regression",
        "num_leaves": 15,
        "max_depth": 6,
        "verbose": -1,
        "zero_as_missing": zero_as_missing,
        "num_threads": 1,
    }
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
    data = lgb.Dataset(rng.normal(size=(200, 3)), rng.integers(0, 2, 200))
    classifier = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, data, 5)
    with pytest.raises(ValueError, match="unsupported LightGBM objective"):
        flatten_lightgbm(classifier)


@pytest.mark.parametrize("rows", [1, 4, 17, PARALLEL_MIN_ROWS + 5])
def test_every_kernel_starts_from_the_base(rows):
    booster, _ = fitted_booster()
    probe = np.random.default_rng(2).normal(size=(rows, 6))
    forest = flatten_lightgbm(booster)
    assert forest.base == 0.0
    with_nan = probe.copy()
    with_nan[0, 0] = np.nan  # the missing-value kernel
    for values in (probe, with_nan):
        shifted = replace(forest, base=2.5).predict(values)
        np.testing.assert_allclose(shifted, np.asarray(booster.predict(values)) + 2.5, rtol=0, atol=1e-12)


def test_non_finite_input_is_refused_as_the_forest_says():
    forest = flatten_lightgbm(fitted_booster()[0])
    probe = np.zeros((3, 6))
    probe[1, 2] = np.inf
    assert np.isfinite(forest.predict(probe)).all()  # LightGBM takes any float
    with pytest.raises(ValueError, match="infinity"):
        replace(forest, input_check=INPUT_ALLOW_NAN).predict(probe)
    probe[1, 2] = np.nan
    assert replace(forest, input_check=INPUT_ALLOW_NAN).predict(probe).shape == (3,)
    with pytest.raises(ValueError, match="NaN"):
        replace(forest, input_check=INPUT_FINITE).predict(probe)
