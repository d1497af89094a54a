"""Bounds checked at load: every array a compiled kernel or a library's C code indexes with another array is
checked before any prediction runs, so a version whose arrays disagree (a short neighbour-target array, a tree
child pointing past its tree, a feature index past the input) is refused like any broken version, instead of
being read out of bounds.

skops rebuilds a model from plain arrays, and neither numba's kernels nor scikit-learn's tree code check the
indices they follow: a tampered or corrupted file would read (or crash on) memory that is not the model's.
:func:`check_model_arrays` walks a loaded pipeline's steps and raises :class:`ModelArraysInvalid` with one
sentence naming the step and the array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from housing.errors import UserError


class ModelArraysInvalid(UserError):
    """A loaded model's arrays are inconsistent; no kernel may run on them."""


def _require(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise ModelArraysInvalid(f"{where}: {what}; the version is refused")


def check_neighbour_encoder(step: Any, where: str) -> None:
    """The stored districts: positions (n, k), targets and incomes (n,), every k at most n."""
    positions = np.asarray(getattr(step, "positions_", np.empty((0, 0))))
    targets = np.asarray(getattr(step, "targets_", np.empty(0)))
    incomes = np.asarray(getattr(step, "incomes_", np.empty(0)))
    rows = positions.shape[0] if positions.ndim == 2 else -1
    _require(rows > 0, where, f"positions_ has shape {positions.shape}, not (rows, coordinates)")
    _require(targets.shape == (rows,), where, f"targets_ has shape {targets.shape}, not ({rows},)")
    _require(incomes.shape == (rows,), where, f"incomes_ has shape {incomes.shape}, not ({rows},)")
    _require(bool(np.isfinite(positions).all()), where, "positions_ holds non-finite values")
    ks = [int(k) for k in step.ks] + [int(step.spread_k)]
    _require(all(0 < k <= rows for k in ks), where, f"a neighbour count of {ks} exceeds the {rows} districts")


def check_tree(tree: Any, n_features: int, where: str) -> None:
    """A scikit-learn tree: children within the tree (or -1 at a leaf), features within the input."""
    count = int(tree.node_count)
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    feature = np.asarray(tree.feature)
    _require(
        left.shape == right.shape == feature.shape == (count,), where, "its node arrays disagree in length"
    )
    leaf = left == -1
    _require(bool(((left >= 1) & (left < count) | leaf).all()), where, "a left child points outside the tree")
    _require(
        bool(((right >= 1) & (right < count) | leaf).all()), where, "a right child points outside the tree"
    )
    _require(
        bool(((feature >= 0) & (feature < n_features) | leaf).all()), where, "a split reads a missing feature"
    )
    _require(np.asarray(tree.value).shape[0] == count, where, "its leaf values disagree with its nodes")


def check_hist_predictor(nodes: np.ndarray, n_features: int, where: str) -> None:
    """A HistGradientBoosting predictor's nodes: children within the predictor, features within the input."""
    count = len(nodes)
    leaf = nodes["is_leaf"].astype(bool)
    left, right, feature = (nodes[name].astype(np.int64) for name in ("left", "right", "feature_idx"))
    _require(bool(((left > 0) & (left < count) | leaf).all()), where, "a left child points outside the tree")
    _require(
        bool(((right > 0) & (right < count) | leaf).all()), where, "a right child points outside the tree"
    )
    _require(
        bool(((feature >= 0) & (feature < n_features) | leaf).all()), where, "a split reads a missing feature"
    )


def check_estimator(model: Any, n_features: int, where: str) -> None:
    """Every tree of a forest, a gradient-boosting model or a HistGradientBoosting model."""
    if hasattr(getattr(model, "tree_", None), "node_count"):  # scikit-learn's Tree (not a KD-tree)
        check_tree(model.tree_, n_features, where)
    for index, estimator in enumerate(np.ravel(getattr(model, "estimators_", []))):
        check_estimator(estimator, n_features, f"{where} tree {index}")
    for index, (predictor, *_) in enumerate(getattr(model, "_predictors", [])):
        check_hist_predictor(predictor.nodes, n_features, f"{where} tree {index}")


def check_model_arrays(pipeline: Any) -> None:
    """Check every step of a loaded pipeline whose arrays a kernel follows; :class:`ModelArraysInvalid`
    names the first that is inconsistent."""
    steps = getattr(pipeline, "steps", [("model", pipeline)])
    for name, step in steps:
        where = f"step {name!r} ({type(step).__name__})"
        if hasattr(step, "targets_") and hasattr(step, "positions_"):
            check_neighbour_encoder(step, where)
        if hasattr(step, "lower_bounds_"):
            bounds = (np.asarray(step.lower_bounds_), np.asarray(step.upper_bounds_))
            columns = np.asarray(step.column_indices_)
            _require(bounds[0].shape == bounds[1].shape == columns.shape, where, "its bounds disagree")
            _require(
                bool(((columns >= 0) & (columns < int(step.n_features_in_))).all()),
                where,
                "a clipped column is outside the input",
            )
        n_features = int(getattr(step, "n_features_in_", 0))
        if n_features:
            check_estimator(step, n_features, where)
