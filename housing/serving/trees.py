"""A compiled evaluator for tree ensembles (numba), faster than LightGBM's and scikit-learn's own predict
on the few-row batches the API serves and on 10,000-row requests. This module reads LightGBM boosters;
``housing.serving.sklearn_trees`` copies scikit-learn's forests and boosted trees into the same format.

The trees are copied out of the fitted model once, when a model is loaded, into one array of 16-byte
nodes whose two children sit side by side, so that a step down a tree is branch-free
(``node = child + (x > threshold)``). Rows are processed in blocks, tree by tree, so a tree stays in
the CPU cache for the whole block. The kernels implement LightGBM's numerical decision rule and sum the
trees in LightGBM's order; rows with missing values go through a kernel with LightGBM's full missing-
value rule. A forest may start from a constant (``base``: scikit-learn's initial prediction) and may
compare features rounded to float32 (scikit-learn's DecisionTree casts its input to float32). Inputs the
model's own predict refuses (NaN, ±inf: ``input_check``) are refused here too, with the same ValueError.
housing.serving.compiled serves with it only after checking it reproduces the pipeline's own predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

MISSING_NONE, MISSING_ZERO, MISSING_NAN = 0, 1, 2
_MISSING_CODES = {"None": MISSING_NONE, "Zero": MISSING_ZERO, "NaN": MISSING_NAN}
ZERO_THRESHOLD = 1e-35
"""LightGBM's kZeroThreshold."""
INPUT_ANY, INPUT_ALLOW_NAN, INPUT_FINITE = "any", "allow-nan", "finite"
"""Non-finite inputs a model's own predict accepts, in scikit-learn's ``ensure_all_finite`` terms: any float
(LightGBM, HistGradientBoosting), NaN but not ±inf (scikit-learn's DecisionTree and forests), none
(GradientBoosting)."""
PARALLEL_MIN_ROWS = 2_000
"""Batches at least this large are spread over every core."""
BLOCK_ROWS = 64
LOCKSTEP_MIN_ROWS = 4
"""Below this many rows, each row walks its own path (stops at its leaf instead of the tree's depth)."""

NODE_DTYPE = np.dtype([("threshold", np.float64), ("feature", np.int32), ("child", np.int32)], align=True)
"""child is the left child and child + 1 the right one. A leaf points to itself with threshold +inf, so
a fixed number of branch-free steps (the tree's depth) lands every row on its leaf."""


@dataclass(frozen=True)
class FlatForest:
    """Every node of every tree in one array; missing-value details kept apart for the exact kernel.

    A row's prediction is ``base`` plus its leaf values, added tree by tree in order.
    """

    nodes: np.ndarray
    leaf_value: np.ndarray
    roots: np.ndarray
    depth: np.ndarray
    missing: np.ndarray
    default_left: np.ndarray
    n_features: int
    has_zero_missing: bool
    base: float = 0.0
    """Every row starts from this value (0 for LightGBM)."""
    float32_input: bool = False
    """Compare the features rounded to float32, as scikit-learn's DecisionTree does."""
    input_check: str = INPUT_ANY
    """Which non-finite inputs are refused (ValueError), as the model's own predict refuses them."""

    def predict(self, values: np.ndarray) -> np.ndarray:
        """``base`` plus the sum of the trees for each row of a float64 (n, n_features) array."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {values.shape}")
        if self.float32_input:
            values = values.astype(np.float32).astype(np.float64)
        total = values.sum()
        if not math.isfinite(total):
            self._check_non_finite(values)
        out = np.full(values.shape[0], self.base, dtype=np.float64)
        if self.has_zero_missing or math.isnan(total):
            _predict_with_missing(
                values, self.nodes, self.leaf_value, self.roots, self.missing, self.default_left, out
            )
        elif values.shape[0] < LOCKSTEP_MIN_ROWS:
            _predict_rows(values, self.nodes, self.leaf_value, self.roots, out)
        elif values.shape[0] >= PARALLEL_MIN_ROWS:
            _predict_parallel(values, self.nodes, self.leaf_value, self.roots, self.depth, out)
        else:
            _predict_blocks(
                values, self.nodes, self.leaf_value, self.roots, self.depth, 0, values.shape[0], out
            )
        return out

    def _check_non_finite(self, values: np.ndarray) -> None:
        """Raise ValueError for a NaN or ±inf the model's own predict refuses."""
        if self.input_check != INPUT_ANY and np.isinf(values).any():
            raise ValueError("input contains infinity, which this model's predict refuses")
        if self.input_check == INPUT_FINITE and np.isnan(values).any():
            raise ValueError("input contains NaN, which this model's predict refuses")


IDENTITY_OBJECTIVES = ("regression", "regression_l1", "huber", "fair", "quantile")
"""LightGBM objectives whose prediction is the raw sum of the trees (no link function): the kernels' sum."""


def flatten_lightgbm(booster: object) -> FlatForest:
    """Copy a fitted LightGBM regression booster's trees into a :class:`FlatForest`.

    Raises ValueError for what the kernels don't implement (categorical splits, non-identity outputs).
    """
    model = booster.dump_model()  # type: ignore[attr-defined]
    objective = str(model.get("objective", ""))
    if objective.split(" ", maxsplit=1)[0] not in IDENTITY_OBJECTIVES or model.get("average_output"):
        raise ValueError(f"unsupported LightGBM objective {objective!r}")
    records: list[tuple[float, int, int]] = []
    leaf_value: list[float] = []
    missing: list[int] = []
    default_left: list[bool] = []

    def reserve() -> int:
        records.append((np.inf, 0, len(records)))
        leaf_value.append(0.0)
        missing.append(MISSING_NONE)
        default_left.append(False)
        return len(records) - 1

    def fill(index: int, node: dict) -> int:
        """Fill node ``index`` and its subtree; return the subtree's depth."""
        if "leaf_value" in node:
            leaf_value[index] = float(node["leaf_value"])
            return 0
        if node.get("decision_type", "<=") != "<=":
            raise ValueError(f"unsupported decision type {node.get('decision_type')!r}")
        child = reserve()
        reserve()
        records[index] = (float(node["threshold"]), int(node["split_feature"]), child)
        missing[index] = _MISSING_CODES[str(node.get("missing_type", "None"))]
        default_left[index] = bool(node.get("default_left", True))
        return 1 + max(fill(child, node["left_child"]), fill(child + 1, node["right_child"]))

    roots, depths = [], []
    for tree in model["tree_info"]:
        root = reserve()
        depths.append(fill(root, tree["tree_structure"]))
        roots.append(root)
    return FlatForest(
        nodes=np.array(records, dtype=NODE_DTYPE),
        leaf_value=np.asarray(leaf_value, dtype=np.float64),
        roots=np.asarray(roots, dtype=np.int64),
        depth=np.asarray(depths, dtype=np.int64),
        missing=np.asarray(missing, dtype=np.int8),
        default_left=np.asarray(default_left, dtype=np.bool_),
        n_features=int(model["max_feature_idx"]) + 1,
        has_zero_missing=MISSING_ZERO in missing,
    )


@njit(nogil=True, cache=True)
def _predict_blocks(values, nodes, leaf_value, roots, depth, start, stop, out):
    position = np.empty(BLOCK_ROWS, dtype=np.int64)
    for block in range(start, stop, BLOCK_ROWS):
        size = min(BLOCK_ROWS, stop - block)
        for t in range(roots.shape[0]):
            position[:size] = roots[t]
            for _ in range(depth[t]):  # rows step in lockstep: independent, branch-free chains
                for i in range(size):
                    item = nodes[position[i]]
                    position[i] = item.child + (values[block + i, item.feature] > item.threshold)
            for i in range(size):
                out[block + i] += leaf_value[position[i]]


@njit(nogil=True, cache=True)
def _predict_rows(values, nodes, leaf_value, roots, out):
    for r in range(values.shape[0]):
        total = out[r]
        for t in range(roots.shape[0]):
            node = roots[t]
            while nodes[node].child != node:
                item = nodes[node]
                node = item.child + (values[r, item.feature] > item.threshold)
            total += leaf_value[node]
        out[r] = total


@njit(nogil=True, cache=True, parallel=True)
def _predict_parallel(values, nodes, leaf_value, roots, depth, out):
    n_blocks = (values.shape[0] + BLOCK_ROWS - 1) // BLOCK_ROWS
    for b in prange(n_blocks):
        start = b * BLOCK_ROWS
        _predict_blocks(
            values, nodes, leaf_value, roots, depth, start, min(start + BLOCK_ROWS, values.shape[0]), out
        )


@njit(nogil=True, cache=True)
def _predict_with_missing(values, nodes, leaf_value, roots, missing, default_left, out):
    for r in range(values.shape[0]):
        total = out[r]
        for t in range(roots.shape[0]):
            node = roots[t]
            while nodes[node].child != node:
                value = values[r, nodes[node].feature]
                kind = missing[node]
                if kind != MISSING_NAN and np.isnan(value):
                    value = 0.0
                if (kind == MISSING_ZERO and abs(value) <= ZERO_THRESHOLD) or (
                    kind == MISSING_NAN and np.isnan(value)
                ):
                    node = nodes[node].child + (0 if default_left[node] else 1)
                else:
                    node = nodes[node].child + (value > nodes[node].threshold)
            total += leaf_value[node]
        out[r] = total
