"""Fitting candidates in parallel: every full fit and every cross-validation fold in one process pool."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.metrics import r2_score
from sklearn.pipeline import Pipeline

from housing.schema import FEATURE_NAMES
from housing.training.candidates import CandidateSpec, build_pipeline
from housing.training.scoring import kfold_indices

logger = logging.getLogger(__name__)


@dataclass
class FittedCandidate:
    """A candidate fitted on the whole training split, with its cross-validation scores."""

    spec: CandidateSpec
    pipeline: Pipeline
    fit_seconds: float
    cv_r2: list[float]
    out_of_fold: np.ndarray | None = None
    """Each training row predicted by the fold model that did not train on it (the loss estimator learns from
    these)."""

    @property
    def cv_r2_mean(self) -> float:
        return float(np.mean(self.cv_r2))

    @property
    def cv_r2_std(self) -> float:
        return float(np.std(self.cv_r2))


FitResult = tuple[int, int | None, Pipeline | None, float, float | None, tuple[np.ndarray, np.ndarray] | None]
"""(candidate index, fold or None for the full fit, the fitted pipeline, fit seconds, fold R2, fold (rows,
predictions))."""


def _fit_params(
    pipeline: Pipeline, sample_weight: np.ndarray | None, reference_rows: np.ndarray | None
) -> dict[str, Any]:
    """The estimator's row weights and, for a pipeline with neighbour targets, the rows they may learn
    from."""
    params: dict[str, Any] = {} if sample_weight is None else {"model__sample_weight": sample_weight}
    if reference_rows is not None and "neighbors" in pipeline.named_steps:
        params["neighbors__reference_rows"] = reference_rows
    return params


def _fit_task(
    index: int,
    fold: int | None,
    pipeline: Pipeline,
    x: pd.DataFrame,
    y: pd.Series,
    sample_weight: np.ndarray | None,
    rows: tuple[np.ndarray, np.ndarray] | None,
    reference_rows: np.ndarray | None = None,
) -> FitResult:
    """Fit on all rows (``rows`` None: return the model) or on one CV fold (return its held-out R2 and
    predictions)."""
    pipeline = clone(pipeline)
    if rows is None:
        started = time.perf_counter()
        pipeline.fit(x, y, **_fit_params(pipeline, sample_weight, reference_rows))
        return index, fold, pipeline, time.perf_counter() - started, None, None
    train_rows, held_out = rows
    weights = None if sample_weight is None else sample_weight[train_rows]
    reference = None if reference_rows is None else reference_rows[train_rows]
    pipeline.fit(x.iloc[train_rows], y.iloc[train_rows], **_fit_params(pipeline, weights, reference))
    held_weights = None if sample_weight is None else sample_weight[held_out]
    predictions = np.asarray(pipeline.predict(x.iloc[held_out]), dtype=np.float64)
    score = r2_score(y.iloc[held_out], predictions, sample_weight=held_weights)
    return index, fold, None, 0.0, float(score), (held_out, predictions)


def fit_candidates(
    specs: list[CandidateSpec],
    x_train: pd.DataFrame,
    y_train: pd.Series,
    *,
    outlier_quantiles: tuple[float, float],
    estimator_scale: float,
    cv_folds: int,
    random_state: int,
    n_jobs: int,
    sample_weight: np.ndarray | None = None,
    reference_rows: np.ndarray | None = None,
) -> Iterator[FittedCandidate]:
    """Fit every candidate on the training split and cross-validate it there (never on the test split).

    All fits (one full fit and ``cv_folds`` fold fits per candidate) run in one pool of ``n_jobs``
    processes, slowest first, so the comparison takes about (total CPU time / n_jobs). The work starts
    when this is called; the returned iterator yields each candidate as soon as its fits are done, so
    the caller can log early finishers while the slow ones still run. ``reference_rows``: the rows whose
    targets neighbour-target features may learn from (None: all).
    """
    x_train = x_train.loc[:, list(FEATURE_NAMES)]
    fold_counts = [spec.cv_folds or cv_folds for spec in specs]
    folds = {count: kfold_indices(len(x_train), count, random_state) for count in set(fold_counts)}
    pipelines = [
        build_pipeline(
            spec,
            outlier_quantiles=outlier_quantiles,
            estimator_scale=estimator_scale,
            random_state=random_state,
        )
        for spec in specs
    ]
    tasks = [(index, fold) for index in range(len(specs)) for fold in [None, *range(fold_counts[index])]]
    tasks.sort(
        key=lambda task: (
            -specs[task[0]].expected_cost(estimator_scale)
            * (1.0 if task[1] is None else (fold_counts[task[0]] - 1) / fold_counts[task[0]])
        )
    )
    logger.info(
        "fitting %d candidates x (1 + their CV folds: %s) on %d rows with %d process(es)",
        len(specs),
        ", ".join(str(count) for count in fold_counts),
        len(x_train),
        n_jobs,
    )
    started = time.perf_counter()
    results = Parallel(
        n_jobs=n_jobs, backend="loky" if n_jobs > 1 else "sequential", return_as="generator_unordered"
    )(
        delayed(_fit_task)(
            index,
            fold,
            pipelines[index],
            x_train,
            y_train,
            sample_weight,
            None if fold is None else folds[fold_counts[index]][fold],
            reference_rows,
        )
        for index, fold in tasks
    )
    return _collect(specs, fold_counts, len(x_train), results, started)


def _collect(
    specs: list[CandidateSpec],
    fold_counts: list[int],
    rows: int,
    results: Iterator[FitResult],
    started: float,
) -> Iterator[FittedCandidate]:
    fitted: dict[int, tuple[Pipeline, float]] = {}
    scores: dict[int, list[float]] = {index: [] for index in range(len(specs))}
    out_of_fold = {index: np.full(rows, np.nan) for index in range(len(specs))}
    for index, fold, pipeline, fit_seconds, score, held_out in results:
        if fold is None and pipeline is not None:
            fitted[index] = (pipeline, fit_seconds)
        elif score is not None:
            scores[index].append(score)
        if held_out is not None:
            out_of_fold[index][held_out[0]] = held_out[1]
        if index in fitted and len(scores[index]) == fold_counts[index]:
            pipeline, seconds = fitted.pop(index)
            predictions = out_of_fold.pop(index)
            yield FittedCandidate(
                spec=specs[index],
                pipeline=pipeline,
                fit_seconds=seconds,
                cv_r2=scores[index],
                out_of_fold=predictions if np.isfinite(predictions).all() else None,
            )
    logger.info("fitted every candidate in %.1f s", time.perf_counter() - started)
