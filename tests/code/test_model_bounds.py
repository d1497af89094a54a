"""Bounds checked at load, on small real fitted pipelines: a consistent model passes, and each array a kernel
follows, once made inconsistent, is refused with a sentence naming the step, before anything predicts."""

from __future__ import annotations

import numpy as np
import pytest

from housing.registry.model_bounds import ModelArraysInvalid, check_model_arrays
from housing.schema import FEATURE_NAMES, TARGET
from housing.training.candidates import CandidateSpec, build_pipeline
from tests.helpers import tiny_dataset


def fitted(estimator: str, params: dict[str, object], neighbours: bool = False):
    """A candidate pipeline fitted on 400 rows spread over California."""
    frame = tiny_dataset(400)
    frame["Latitude"] = np.linspace(33, 41, 400)
    frame["Longitude"] = np.linspace(-123, -115, 400)
    spec = CandidateSpec("probe", estimator, params, features="spatial" if neighbours else "raw")
    pipeline = build_pipeline(spec, outlier_quantiles=(0.01, 0.99), estimator_scale=1.0, random_state=0)
    return pipeline.fit(frame[list(FEATURE_NAMES)], frame[TARGET.name])


@pytest.mark.parametrize(
    ("estimator", "params"),
    [
        ("RandomForestRegressor", {"n_estimators": 3, "random_state": 0}),
        ("GradientBoostingRegressor", {"n_estimators": 3, "random_state": 0}),
        ("HistGradientBoostingRegressor", {"max_iter": 3, "random_state": 0}),
    ],
)
def test_a_tree_pointing_outside_itself_or_reading_a_missing_feature_is_refused(estimator, params):
    pipeline = fitted(estimator, params)
    check_model_arrays(pipeline)  # consistent: passes
    model = pipeline.named_steps["model"]
    if hasattr(model, "_predictors"):
        nodes = model._predictors[0][0].nodes
        internal = np.flatnonzero(~nodes["is_leaf"].astype(bool))[0]
        nodes["left"][internal] = len(nodes) + 5
    else:
        tree = np.ravel(model.estimators_)[0].tree_
        internal = int(np.flatnonzero(tree.children_left != -1)[0])
        tree.feature[internal] = 99  # numpy views of the tree's own node array
    with pytest.raises(ModelArraysInvalid, match="step 'model'.*(outside the tree|missing feature)"):
        check_model_arrays(pipeline)


def test_a_short_neighbour_target_array_is_refused_before_any_kernel_reads_it():
    pipeline = fitted("HistGradientBoostingRegressor", {"max_iter": 3, "random_state": 0}, neighbours=True)
    check_model_arrays(pipeline)
    encoder = pipeline.named_steps["neighbors"]
    encoder.targets_ = encoder.targets_[:10]
    with pytest.raises(ModelArraysInvalid, match=r"step 'neighbors'.*targets_ has shape \(10,\)"):
        check_model_arrays(pipeline)
