"""The compiled path equals pipeline.predict, runs none of the libraries' own transform/predict, says
which steps it compiles, and anything it can't compile or that differs falls back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor
from sklearn.linear_model import BayesianRidge, ElasticNet, HuberRegressor, Lasso, LinearRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from housing.config.settings import get_settings
from housing.schema import FEATURE_NAMES
from housing.serving.compiled import (
    StepPath,
    compile_pipeline,
    fast_predict_or_default,
    probe_rows,
    step_paths,
)
from housing.serving.trees import PARALLEL_MIN_ROWS
from housing.training.candidates import build_pipeline, load_candidate_specs
from housing.training.features import SpatialFeatures
from tests.helpers import tiny_dataset

CANDIDATES = [spec.name for spec in load_candidate_specs(get_settings().candidates_path)]
OTHER_ESTIMATORS: dict[str, Callable[[], Any]] = {
    "ridge": lambda: Ridge(alpha=1.0),
    "lasso": lambda: Lasso(alpha=0.01),
    "elastic_net": lambda: ElasticNet(alpha=0.01, l1_ratio=0.3),
    "bayesian_ridge": BayesianRidge,
    "huber": HuberRegressor,
    "extra_trees": lambda: ExtraTreesRegressor(n_estimators=4, max_depth=6, random_state=0),
}
"""Other estimators the compiled path knows, beside the candidates' own."""


def training_frame(rows: int = 800) -> tuple[pd.DataFrame, pd.Series]:
    frame = tiny_dataset(rows)
    rng = np.random.default_rng(5)
    frame["Latitude"] = rng.uniform(32.6, 41.9, rows)
    frame["Longitude"] = rng.uniform(-124.3, -114.4, rows)
    frame["AveOccup"] = rng.uniform(1, 6, rows)
    return frame.loc[:, list(FEATURE_NAMES)], frame["MedHouseVal"]


def fitted_candidate(name: str, estimator: Any = None) -> Pipeline:
    """A candidate's pipeline with few trees on synthetic rows; ``estimator`` replaces its model."""
    x, y = training_frame()
    spec = load_candidate_specs(get_settings().candidates_path, [name])[0]
    pipeline = build_pipeline(spec, outlier_quantiles=(0.01, 0.99), estimator_scale=0.05)
    if estimator is not None:
        pipeline.steps[-1] = ("model", estimator)
    with threadpool_limits(1):  # HistGradientBoosting's OpenMP threads crawl on a busy CI machine
        return pipeline.fit(x, y)


def count_library_calls(pipeline: Pipeline) -> Counter[str]:
    """Count every call of the steps' own transform / predict (instance attributes shadow the methods,
    so both ``pipeline.predict`` and anything the compiled path keeps go through the counter)."""
    calls: Counter[str] = Counter()
    for name, step in pipeline.steps:
        for method in ("transform", "predict"):
            if hasattr(step, method):
                original = getattr(step, method)

                def counted(
                    *args: Any, _original: Any = original, _key: str = f"{name}.{method}", **kwargs: Any
                ) -> Any:
                    calls[_key] += 1
                    return _original(*args, **kwargs)

                setattr(step, method, counted)
    return calls


def probe_batches() -> dict[str, pd.DataFrame]:
    """A batch, a single row, and a batch big enough for the parallel kernels."""
    return {
        "batch": probe_rows(300, seed=1),
        "single": probe_rows(1, seed=2),
        "parallel": probe_rows(PARALLEL_MIN_ROWS + 5, seed=3),
    }


def assert_compiled_equals_pipeline(pipeline: Pipeline) -> None:
    """compile_pipeline and the served path reproduce pipeline.predict on every batch size, without a
    single call of a step's own transform or predict."""
    batches = probe_batches()
    expected = {size: pipeline.predict(rows) for size, rows in batches.items()}
    calls = count_library_calls(pipeline)
    predict, verified = fast_predict_or_default(pipeline)
    assert verified
    compiled = compile_pipeline(pipeline)
    calls.clear()
    for size, rows in batches.items():
        for path in (compiled, predict):
            np.testing.assert_allclose(path(rows.to_numpy()), expected[size], rtol=0, atol=1e-9, err_msg=size)
    assert not calls, f"the compiled path ran the library's own methods: {dict(calls)}"


@pytest.mark.parametrize("name", CANDIDATES)
def test_every_candidate_is_compiled_and_equals_pipeline_predict(name):
    pipeline = fitted_candidate(name)
    assert [path.name for path in step_paths(pipeline)] == [step for step, _ in pipeline.steps]
    assert all(path.compiled for path in step_paths(pipeline)), step_paths(pipeline)
    assert step_paths(pipeline)[-1].kind == type(pipeline.steps[-1][1]).__name__
    assert_compiled_equals_pipeline(pipeline)


@pytest.mark.parametrize("name", sorted(OTHER_ESTIMATORS))
def test_other_linear_models_and_forests_are_compiled(name):
    pipeline = fitted_candidate("linear_regression", OTHER_ESTIMATORS[name]())
    assert step_paths(pipeline)[-1] == StepPath("model", type(pipeline.steps[-1][1]).__name__, True)
    assert_compiled_equals_pipeline(pipeline)


def categorical_hist_gradient_boosting() -> tuple[Pipeline, pd.DataFrame]:
    x, y = training_frame()
    x["HouseAge"] = np.random.default_rng(6).integers(0, 5, len(x)).astype(np.float64)
    with threadpool_limits(1):  # as in fitted_candidate
        model = HistGradientBoostingRegressor(max_iter=10, categorical_features=[1])
        return Pipeline([("model", model)]).fit(x, y), x


@pytest.mark.parametrize("case", ["k_neighbors", "categorical_hist_gradient_boosting"])
def test_an_estimator_without_a_compiled_form_is_served_by_pipeline_predict(case):
    if case == "k_neighbors":
        pipeline, rows = (
            fitted_candidate("linear_regression", KNeighborsRegressor(n_neighbors=3)),
            probe_rows(50),
        )
    else:
        pipeline, rows = categorical_hist_gradient_boosting()
    paths = step_paths(pipeline)
    assert not paths[-1].compiled and all(path.compiled for path in paths[:-1])
    assert paths[-1].kind == type(pipeline.steps[-1][1]).__name__
    expected = pipeline.predict(rows)
    calls = count_library_calls(pipeline)
    predict, verified = fast_predict_or_default(pipeline, reference=rows)
    assert not verified
    calls.clear()
    np.testing.assert_array_equal(predict(rows.to_numpy()), expected)
    assert calls["model.predict"] == 1


def test_a_linear_model_refuses_what_its_predict_refuses():
    pipeline = Pipeline([("model", LinearRegression())]).fit(*training_frame())
    rows = probe_rows(3)
    rows.iloc[1, 0] = np.nan
    with pytest.raises(ValueError):
        pipeline.predict(rows)
    with pytest.raises(ValueError, match="NaN"):
        compile_pipeline(pipeline)(rows.to_numpy())


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
