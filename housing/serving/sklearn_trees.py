"""scikit-learn's tree ensembles copied into :class:`housing.serving.trees.FlatForest`, so that they are
evaluated by the same compiled kernels as LightGBM instead of by scikit-learn's own predict (which starts an
OpenMP thread pool per call for HistGradientBoosting and goes through joblib over every tree for a forest).

Each estimator's own predict, read in scikit-learn 1.9's source, and how the copy reproduces it:

- ``RandomForestRegressor`` / ``ExtraTreesRegressor`` (``ForestRegressor.predict``): X cast to float32,
  the mean of the trees. Here each leaf value is divided by the number of trees, so the sum of the
  trees is the mean (the rounding differs from sklearn's sum-then-divide by about 1e-15).
- ``DecisionTreeRegressor`` / ``ExtraTreeRegressor``: X cast to float32, the leaf value.
- ``GradientBoostingRegressor`` (``_raw_predict``): X cast to float32, the init estimator's constant
  (``init_`` a ``DummyRegressor``, or ``"zero"``) plus ``learning_rate * value`` of each tree in order.
  The leaf values are that same product and ``base`` the constant: the same numbers, summed in the same
  order.
- ``HistGradientBoostingRegressor`` (``_raw_predict``): X in float64, ``_baseline_prediction`` plus each
  predictor's leaf value in order, then the loss's inverse link (identity required). Categorical splits
  are refused.

Every tree sends ``x <= threshold`` left, as LightGBM's ``<=`` rule does. Missing values: a DecisionTree
sends NaN to the side recorded at each node (``missing_go_to_left``), and so does HistGradientBoosting;
those nodes are copied with the NaN rule of LightGBM's missing-value kernel, which is the same. Where the
estimator's own predict refuses NaN or ±inf (GradientBoosting refuses both; forests and trees refuse
±inf), ``FlatForest.predict`` raises the same ValueError (``input_check``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit
from sklearn._loss.link import IdentityLink
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor
from sklearn.ensemble._forest import ForestRegressor
from sklearn.tree import DecisionTreeRegressor
from sklearn.tree._classes import BaseDecisionTree
from sklearn.utils import get_tags

from housing.serving.trees import (
    INPUT_ALLOW_NAN,
    INPUT_ANY,
    INPUT_FINITE,
    MISSING_NAN,
    NODE_DTYPE,
    FlatForest,
)

TreeArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""One tree as (left, right, feature, threshold, value, missing_go_to_left); left < 0 marks a leaf."""


def flatten_sklearn(estimator: Any) -> FlatForest | None:
    """The estimator's trees as a :class:`FlatForest`; None for an estimator that is not one of
    scikit-learn's tree regressors. Raises ValueError for one whose predict the kernels don't reproduce
    (categorical splits, several outputs, a non-identity link, a custom init estimator, an overridden
    predict).
    """
    if isinstance(estimator, ForestRegressor):
        return _flatten_forest(estimator)
    if isinstance(estimator, DecisionTreeRegressor):
        _require_own_predict(estimator, BaseDecisionTree)
        return _assemble(
            [_tree_arrays(estimator, 1.0)], estimator.n_features_in_, 0.0, _tree_input_check(estimator), True
        )
    if isinstance(estimator, GradientBoostingRegressor):
        return _flatten_gradient_boosting(estimator)
    if isinstance(estimator, HistGradientBoostingRegressor):
        return _flatten_hist_gradient_boosting(estimator)
    return None


def _require_own_predict(estimator: Any, base_class: Any) -> None:
    if type(estimator).predict is not base_class.predict:
        raise ValueError(f"{type(estimator).__name__} overrides predict")


def _tree_input_check(tree: DecisionTreeRegressor) -> str:
    """What the tree's own input validation accepts (``BaseDecisionTree._validate_X_predict``)."""
    return INPUT_ALLOW_NAN if get_tags(tree).input_tags.allow_nan else INPUT_FINITE


def _tree_arrays(tree: DecisionTreeRegressor, scale: float, divisor: float = 1.0) -> TreeArrays:
    """A fitted DecisionTreeRegressor's nodes, leaf values as ``scale * value / divisor``."""
    if tree.n_outputs_ != 1:
        raise ValueError("multi-output trees are not supported")
    t = tree.tree_
    value = t.value[:, 0, 0]
    if scale != 1.0:
        value = scale * value
    if divisor != 1.0:
        value = value / divisor
    return t.children_left, t.children_right, t.feature, t.threshold, value, t.missing_go_to_left


def _flatten_forest(forest: ForestRegressor) -> FlatForest:
    _require_own_predict(forest, ForestRegressor)
    if forest.n_outputs_ != 1:
        raise ValueError("multi-output forests are not supported")
    count = float(len(forest.estimators_))
    trees = [_tree_arrays(tree, 1.0, count) for tree in forest.estimators_]
    return _assemble(trees, forest.n_features_in_, 0.0, _tree_input_check(forest.estimators_[0]), True)


def _flatten_gradient_boosting(model: GradientBoostingRegressor) -> FlatForest:
    _require_own_predict(model, GradientBoostingRegressor)
    if model.estimators_.shape[1] != 1:
        raise ValueError("several trees per stage are not supported")
    if (
        not (isinstance(model.init_, str) and model.init_ == "zero")
        and type(model.init_) is not DummyRegressor
    ):
        raise ValueError(f"init estimator {type(model.init_).__name__} is not a constant")
    # sklearn's own initial raw prediction (a constant, checked above) on one row
    base = float(model._raw_predict_init(np.zeros((1, model.n_features_in_), dtype=np.float32))[0, 0])
    trees = [_tree_arrays(tree, float(model.learning_rate)) for tree in model.estimators_[:, 0]]
    return _assemble(trees, model.n_features_in_, base, INPUT_FINITE, True)


def _flatten_hist_gradient_boosting(model: HistGradientBoostingRegressor) -> FlatForest:
    _require_own_predict(model, HistGradientBoostingRegressor)
    if model._preprocessor is not None or model.is_categorical_ is not None:
        raise ValueError("categorical features are not supported")
    if model.n_trees_per_iteration_ != 1 or not isinstance(model._loss.link, IdentityLink):
        raise ValueError(f"loss {model.loss!r} is not supported (identity link only)")
    trees = []
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        if (nodes["is_categorical"] & ~nodes["is_leaf"].astype(bool)).any():
            raise ValueError("categorical splits are not supported")
        leaf = nodes["is_leaf"].astype(bool)
        left = np.where(leaf, -1, nodes["left"].astype(np.int64))
        trees.append(
            (
                left,
                nodes["right"],
                nodes["feature_idx"],
                nodes["num_threshold"],
                nodes["value"],
                nodes["missing_go_to_left"],
            )
        )
    base = float(np.asarray(model._baseline_prediction).ravel()[0])
    return _assemble(trees, model.n_features_in_, base, INPUT_ANY, False)


def _assemble(
    trees: list[TreeArrays], n_features: int, base: float, input_check: str, float32_input: bool
) -> FlatForest:
    """Re-lay the trees out so that each node's two children sit side by side, in one array."""
    sizes = np.array([len(tree[0]) for tree in trees], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    left = np.concatenate(
        [np.where(tree[0] < 0, -1, tree[0] + offset) for tree, offset in zip(trees, offsets, strict=True)]
    ).astype(np.int64)
    right = np.concatenate(
        [np.asarray(tree[1], dtype=np.int64) + offset for tree, offset in zip(trees, offsets, strict=True)]
    )
    feature = np.concatenate([np.asarray(tree[2], dtype=np.int64) for tree in trees])
    threshold = np.concatenate([np.asarray(tree[3], dtype=np.float64) for tree in trees])
    value = np.concatenate([np.asarray(tree[4], dtype=np.float64) for tree in trees])
    go_left = np.concatenate([np.asarray(tree[5], dtype=np.bool_) for tree in trees])
    inner = left >= 0
    if inner.any() and (feature[inner].min() < 0 or feature[inner].max() >= n_features):
        raise ValueError("a split names a feature outside the input")
    new_threshold, new_feature, child, leaf_value, default_left, roots, depth = _relayout(
        left, right, feature, threshold, value, go_left, offsets
    )
    nodes = np.empty(len(child), dtype=NODE_DTYPE)
    nodes["threshold"], nodes["feature"], nodes["child"] = new_threshold, new_feature, child
    return FlatForest(
        nodes=nodes,
        leaf_value=leaf_value,
        roots=roots,
        depth=depth,
        missing=np.full(len(child), MISSING_NAN, dtype=np.int8),
        default_left=default_left,
        n_features=int(n_features),
        has_zero_missing=False,
        base=base,
        float32_input=float32_input,
        input_check=input_check,
    )


@njit(cache=True)
def _relayout(left, right, feature, threshold, value, go_left, old_roots):
    """Depth-first copy of every tree: a leaf points to itself with threshold +inf, an inner node to the
    first of its two adjacent children. Returns the new arrays, the roots and each tree's depth."""
    n = left.shape[0]
    new_threshold = np.full(n, np.inf)
    new_feature = np.zeros(n, dtype=np.int32)
    child = np.arange(n).astype(np.int32)
    leaf_value = np.zeros(n)
    default_left = np.zeros(n, dtype=np.bool_)
    roots = np.empty(old_roots.shape[0], dtype=np.int64)
    depth = np.zeros(old_roots.shape[0], dtype=np.int64)
    stack = np.empty((n, 3), dtype=np.int64)  # (old node, new node, depth)
    free = 0
    for t in range(old_roots.shape[0]):
        roots[t] = free
        free += 1
        stack[0, 0], stack[0, 1], stack[0, 2] = old_roots[t], roots[t], 0
        top = 1
        while top > 0:
            top -= 1
            old, new, level = stack[top, 0], stack[top, 1], stack[top, 2]
            if left[old] < 0:
                leaf_value[new] = value[old]
                depth[t] = max(depth[t], level)
                continue
            child[new] = free
            new_threshold[new] = threshold[old]
            new_feature[new] = feature[old]
            default_left[new] = go_left[old]
            stack[top, 0], stack[top, 1], stack[top, 2] = left[old], free, level + 1
            stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2] = right[old], free + 1, level + 1
            top += 2
            free += 2
    return new_threshold, new_feature, child, leaf_value, default_left, roots, depth
