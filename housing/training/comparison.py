"""The comparison run: fit every candidate, log each as a child MLflow run, register each as a version."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.entities import RunInfo

from housing.config.settings import Settings
from housing.errors import mask_uri
from housing.monitoring.loss_estimation import anchor, fit_loss_estimator, log_loss_estimator
from housing.registry import tracking
from housing.registry.tracking import CANDIDATE_RUN_TYPE, RUN_TYPE_TAG, TRAINING_RUN_TYPE
from housing.schema import TARGET
from housing.training import plots
from housing.training.candidates import CandidateSpec
from housing.training.fitting import FittedCandidate, fit_candidates
from housing.training.intervals import fit_interval, log_interval
from housing.training.scoring import best_first, regression_metrics

logger = logging.getLogger(__name__)

PARENT_RUN_NAME = "Comparative Analysis"


@dataclass
class TrainingData:
    """What a comparison run trains and evaluates on, and where it came from."""

    x_train: pd.DataFrame
    y_train: pd.Series
    x_test: pd.DataFrame
    y_test: pd.Series
    source: str
    data_sha256: str
    train_weight: np.ndarray | None = None
    test_weight: np.ndarray | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    """Extra tags describing the data (e.g. how many labelled production rows were added)."""
    reference_rows: np.ndarray | None = None
    """The training rows whose targets neighbour features may learn (None: all; a retrain: the split's)."""


@dataclass(frozen=True)
class CandidateResult:
    """One trained and registered candidate."""

    name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    fit_seconds: float


@dataclass(frozen=True)
class TrainingOutcome:
    """The parent run and its candidates, best R2 first."""

    parent_run_id: str
    results: list[CandidateResult]


def train_and_register(settings: Settings, data: TrainingData, specs: list[CandidateSpec]) -> TrainingOutcome:
    """Fit ``specs`` on ``data``, log one child run per candidate under a parent run, register every model.

    The fits start first; connecting to MLflow and logging each finished candidate overlap with them.
    """
    fitted = fit_candidates(
        specs,
        data.x_train,
        data.y_train,
        outlier_quantiles=settings.outlier_quantiles,
        estimator_scale=settings.estimator_scale,
        cv_folds=settings.cv_folds,
        random_state=settings.random_state,
        n_jobs=settings.n_jobs,
        sample_weight=data.train_weight,
        reference_rows=data.reference_rows,
    )
    client = tracking.connect(settings)
    experiment_id = tracking.ensure_experiment(
        client, settings.experiment_name, settings.mlflow_artifact_location
    )
    common_tags = {
        RUN_TYPE_TAG: TRAINING_RUN_TYPE,
        "git_commit": tracking.git_commit(),
        "data_sha256": data.data_sha256,
        "data_source": mask_uri(data.source),
        **data.provenance,
    }
    datasets = {
        "training": tracking.make_dataset(
            data.x_train.assign(**{TARGET.name: data.y_train.to_numpy()}),
            name="california_housing_train",
            source=data.source,
        ),
        "evaluation": tracking.make_dataset(
            data.x_test.assign(**{TARGET.name: data.y_test.to_numpy()}),
            name="california_housing_test",
            source=data.source,
        ),
    }
    results = []
    with mlflow.start_run(experiment_id=experiment_id, run_name=PARENT_RUN_NAME, tags=common_tags) as parent:
        for context, dataset in datasets.items():
            mlflow.log_input(dataset, context=context)
        mlflow.log_params(
            {
                "train_rows": len(data.x_train),
                "test_rows": len(data.x_test),
                "cv_folds": settings.cv_folds,
                "random_state": settings.random_state,
                "estimator_scale": settings.estimator_scale,
                "candidates": ",".join(spec.name for spec in specs),
            }
        )
        for candidate in fitted:
            child_tags = {**common_tags, RUN_TYPE_TAG: CANDIDATE_RUN_TYPE, "candidate": candidate.spec.name}
            results.append(_log_candidate(settings, candidate, data, datasets, parent.info, child_tags))
        results.sort(key=lambda result: best_first(result.metrics))
        comparison = pd.DataFrame(
            [
                {"model": r.name, "version": r.version, **r.metrics, "fit_seconds": r.fit_seconds}
                for r in results
            ]
        )
        mlflow.log_table(comparison, artifact_file="comparison.json")
        mlflow.log_metrics({"best_r2": results[0].metrics["r2"], "best_rmse": results[0].metrics["rmse"]})
    return TrainingOutcome(parent_run_id=parent.info.run_id, results=results)


def _log_error_models(
    settings: Settings, out_of_fold: np.ndarray, data: TrainingData, y_pred: np.ndarray
) -> None:
    """Fit and log, into the active run, what a version learns from its out-of-fold errors: its loss
    estimator (its level anchored on the evaluation rows) and its prediction interval (calibrated on the
    training rows alone)."""
    estimator = fit_loss_estimator(
        data.x_train, data.y_train, out_of_fold, data.train_weight, settings.random_state
    )
    estimator = anchor(
        estimator, data.x_test, data.y_test, y_pred, data.test_weight, described="evaluation rows"
    )
    log_loss_estimator(estimator)
    interval = fit_interval(
        data.x_train,
        data.y_train,
        out_of_fold,
        settings.interval_level,
        data.train_weight,
        settings.random_state,
    )
    log_interval(interval)
    mlflow.log_metrics(
        {
            "loss_estimator_slope": estimator.mse_slope,
            "loss_estimator_intercept": estimator.mse_intercept,
            "loss_estimator_variance_ratio": estimator.variance_ratio,
            "interval_correction": interval.correction,
            "interval_calibration_coverage": interval.calibration_coverage["all"],
        }
    )


def _log_candidate(
    settings: Settings,
    candidate: FittedCandidate,
    data: TrainingData,
    datasets: dict[str, PandasDataset],
    parent: RunInfo,
    tags: dict[str, str],
) -> CandidateResult:
    spec = candidate.spec
    y_pred = candidate.pipeline.predict(data.x_test)
    metrics = regression_metrics(data.y_test, y_pred, sample_weight=data.test_weight)
    metrics.update(cv_r2_mean=candidate.cv_r2_mean, cv_r2_std=candidate.cv_r2_std)
    title = f"{spec.name} (R2 {metrics['r2']:.3f}, RMSE {metrics['rmse']:.3f})"
    with mlflow.start_run(
        experiment_id=parent.experiment_id, run_name=spec.name, nested=True, tags=tags
    ) as run:
        mlflow.log_params({"estimator": spec.estimator, **spec.scaled_params(settings.estimator_scale)})
        mlflow.log_params(
            {
                "outlier_quantiles": list(settings.outlier_quantiles),
                "cv_folds": spec.cv_folds or settings.cv_folds,
            }
        )
        mlflow.log_metrics({**metrics, "fit_seconds": candidate.fit_seconds})
        for context, dataset in datasets.items():
            mlflow.log_input(dataset, context=context)
        y_true = data.y_test.to_numpy()
        mlflow.log_figure(
            plots.plot_predicted_vs_actual(y_true, y_pred, title), "plots/predicted_vs_actual.png"
        )
        mlflow.log_figure(plots.plot_residuals(y_true, y_pred, title), "plots/residuals.png")
        importances = plots.feature_importances(candidate.pipeline)
        if importances is not None:
            mlflow.log_dict(importances.sort_values(ascending=False).to_dict(), "feature_importances.json")
            mlflow.log_figure(
                plots.plot_importances(importances, f"{spec.name} feature importances"),
                "plots/feature_importances.png",
            )
        version = tracking.log_model(
            candidate.pipeline,
            registered_model_name=settings.model_name,
            predictions=y_pred[:100],
            x_sample=data.x_test.iloc[:100],
        )
        if candidate.out_of_fold is not None:
            _log_error_models(settings, candidate.out_of_fold, data, y_pred)
        client = mlflow.MlflowClient()
        for key, value in {
            "candidate": spec.name,
            "training_run_id": parent.run_id,
            "data_sha256": data.data_sha256,
        }.items():
            client.set_model_version_tag(settings.model_name, version.version, key, value)
        client.update_model_version(
            settings.model_name,
            version.version,
            description=tracking.version_description(
                spec.name, spec.description, data.data_sha256, parent.run_id
            ),
        )
        tracking.describe_registered_model(client, settings.model_name)
    logger.info(
        "%s: R2 %.4f RMSE %.4f, registered as version %s",
        spec.name,
        metrics["r2"],
        metrics["rmse"],
        version.version,
    )
    return CandidateResult(spec.name, str(version.version), run.info.run_id, metrics, candidate.fit_seconds)
