"""scikit-learn's tree ensembles, copied into the compiled kernels, reproduce their own predict: on every
kernel (one row, a few, a block, a parallel batch), on values that round across a threshold in float32,
and for NaN and ±inf (the same value, or the same refusal)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingRegressor,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression
from sklearn.neighbors import KNeighborsRegressor
from sklearn.tree import DecisionTreeRegressor
from threadpoolctl import threadpool_limits

from housing.serving.sklearn_trees import flatten_sklearn
from housing.serving.trees import PARALLEL_MIN_ROWS

ESTIMATORS = {
    "random_forest": lambda: RandomForestRegressor(
        n_estimators=8, max_depth=8, min_samples_split=5, random_state=0
    ),
    "extra_trees": lambda: ExtraTreesRegressor(n_estimators=5, max_depth=6, random_state=0),
    "decision_tree": lambda: DecisionTreeRegressor(max_depth=7, random_state=0),
    "gradient_boosting": lambda: GradientBoostingRegressor(
        n_estimators=30, max_depth=3, subsample=0.8, learning_rate=0.1, random_state=0
    ),
    "gradient_boosting_zero_init_huber": lambda: GradientBoostingRegressor(
        n_estimators=15, init="zero", loss="huber", random_state=0
    ),
    "hist_gradient_boosting": lambda: HistGradientBoostingRegressor(
        max_iter=30, max_leaf_nodes=15, early_stopping=False, random_state=0
    ),
}


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eight standardised-looking features and a non-linear target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8))
    y = 2 * x[:, 0] + np.sin(3 * x[:, 1]) + x[:, 2] * x[:, 3] + rng.normal(scale=0.1, size=rows)
    return x, y


def fitted(name: str, nan_share: float = 0.0) -> Any:
    x, y = synthetic(600)
    if nan_share:
        x[np.random.default_rng(1).random(x.shape) < nan_share] = np.nan
    with threadpool_limits(1):  # HistGradientBoosting's OpenMP threads crawl on a busy CI machine
        return ESTIMATORS[name]().fit(x, y)


@pytest.fixture(scope="module", params=sorted(ESTIMATORS))
def estimator(request: pytest.FixtureRequest) -> Any:
    return fitted(request.param)


@pytest.mark.parametrize("rows", [1, 3, 4, 65, PARALLEL_MIN_ROWS + 5])
def test_every_kernel_matches_the_estimator(estimator, rows):
    probe = synthetic(rows, seed=rows)[0]
    forest = flatten_sklearn(estimator)
    assert forest is not None
    np.testing.assert_allclose(forest.predict(probe), estimator.predict(probe), rtol=0, atol=1e-9)


def test_values_that_round_across_a_threshold_in_float32(estimator):
    """Probe every split at its threshold and one float64 step either side: a DecisionTree compares the
    features rounded to float32, so these rows go where a float64 comparison would not send them."""
    forest = flatten_sklearn(estimator)
    assert forest is not None
    inner = forest.nodes["child"] != np.arange(len(forest.nodes))
    features, thresholds = forest.nodes["feature"][inner], forest.nodes["threshold"][inner]
    base = np.zeros((len(thresholds), 8))
    probes = []
    for shift in (-np.inf, 0.0, np.inf):
        rows = base.copy()
        rows[np.arange(len(thresholds)), features] = np.nextafter(thresholds, shift)
        probes.append(rows)
    probe = np.vstack(probes)
    np.testing.assert_allclose(forest.predict(probe), estimator.predict(probe), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["random_forest", "decision_tree", "hist_gradient_boosting"])
def test_missing_values_follow_the_estimator(name):
    """Trees fitted with NaN send NaN where they learnt to; so does the copy (all kernels: 1 row and many)."""
    model = fitted(name, nan_share=0.1)
    probe = synthetic(300, seed=3)[0]
    probe[np.random.default_rng(4).random(probe.shape) < 0.2] = np.nan
    forest = flatten_sklearn(model)
    assert forest is not None
    for rows in (probe[:1], probe):
        np.testing.assert_allclose(forest.predict(rows), model.predict(rows), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [
        ("gradient_boosting", np.nan, True),
        ("gradient_boosting", np.inf, True),
        ("random_forest", np.inf, True),
        ("random_forest", np.nan, False),
        ("hist_gradient_boosting", np.inf, False),
        ("hist_gradient_boosting", -np.inf, False),
    ],
)
def test_non_finite_input_is_refused_where_the_estimator_refuses_it(name, value, refused):
    model = fitted(name)
    forest = flatten_sklearn(model)
    assert forest is not None
    probe = synthetic(5, seed=5)[0]
    probe[2, 0] = value
    if refused:
        with pytest.raises(ValueError):
            model.predict(probe)
        with pytest.raises(ValueError):
            forest.predict(probe)
    else:
        np.testing.assert_allclose(forest.predict(probe), model.predict(probe), rtol=0, atol=1e-9)


def test_what_the_kernels_do_not_reproduce_is_refused():
    x, y = synthetic(300)
    categories = x.copy()
    categories[:, 0] = np.random.default_rng(2).integers(0, 4, len(x))
    with threadpool_limits(1):  # as in fitted()
        categorical = HistGradientBoostingRegressor(max_iter=5, categorical_features=[0]).fit(categories, y)
        poisson = HistGradientBoostingRegressor(max_iter=5, loss="poisson").fit(x, np.abs(y))
    refused = {
        "categorical features": categorical,
        "identity link": poisson,
        "is not a constant": GradientBoostingRegressor(n_estimators=3, init=LinearRegression()).fit(x, y),
        "multi-output": RandomForestRegressor(n_estimators=2).fit(x, np.c_[y, y]),
    }
    for message, model in refused.items():
        with pytest.raises(ValueError, match=message):
            flatten_sklearn(model)
    assert flatten_sklearn(KNeighborsRegressor().fit(x, y)) is None
    assert flatten_sklearn(LinearRegression().fit(x, y)) is None


def test_an_overridden_predict_is_refused():
    class Shifted(RandomForestRegressor):
        def predict(self, X):
            return super().predict(X) + 1.0

    x, y = synthetic(200)
    with pytest.raises(ValueError, match="overrides predict"):
        flatten_sklearn(Shifted(n_estimators=2).fit(x, y))
