"""Hyperparameter search for a LightGBM candidate (Optuna), as nested MLflow runs.

``train.py --tune N`` runs N trials of Optuna's TPE sampler (seeded with ``random_state``, so the same
seed gives the same trials) scoring each parameter set by K-fold R2 on the training split only. Every
trial is a child run of a "Tuning <candidate>" run. The best parameters are written to a YAML proposal
(``housing/training/tuned/<candidate>.yaml``) for review: once its parameters are copied into candidates.yaml,
the default pipeline reproduces the result without searching.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from sklearn.base import clone
from sklearn.metrics import r2_score

from housing.config.settings import Settings
from housing.data.artifacts import write_atomic
from housing.errors import UserError
from housing.registry import tracking
from housing.registry.tracking import RUN_TYPE_TAG
from housing.training.candidates import CandidateSpec, build_pipeline
from housing.training.scoring import kfold_indices

logger = logging.getLogger(__name__)

TUNING_RUN_TYPE = "tuning"


def suggest_lightgbm(trial: Any) -> dict[str, Any]:
    """The LightGBM search space."""
    return {
        "n_estimators": trial.suggest_int("n_estimators", 300, 1200, step=100),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.15, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 15, 127),
        "max_depth": trial.suggest_int("max_depth", 6, 12),
        "min_child_samples": trial.suggest_int("min_child_samples", 5, 60),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }


@dataclass
class TuningResult:
    parent_run_id: str
    best_params: dict[str, Any]
    best_cv_r2: float
    trials: int
    proposal_path: Path


def cv_r2(spec: CandidateSpec, x: pd.DataFrame, y: pd.Series, settings: Settings) -> float:
    """Mean K-fold R2 of a candidate on the training split."""
    pipeline = build_pipeline(
        spec,
        outlier_quantiles=settings.outlier_quantiles,
        estimator_scale=settings.estimator_scale,
        random_state=settings.random_state,
    )
    scores = []
    for train_rows, held_out in kfold_indices(len(x), settings.cv_folds, settings.random_state):
        fitted = clone(pipeline).fit(x.iloc[train_rows], y.iloc[train_rows])
        scores.append(r2_score(y.iloc[held_out], fitted.predict(x.iloc[held_out])))
    return float(np.mean(scores))


def tune(
    settings: Settings,
    spec: CandidateSpec,
    x_train: pd.DataFrame,
    y_train: pd.Series,
    *,
    trials: int,
    proposal_path: Path,
) -> TuningResult:
    """Search ``spec``'s hyperparameters; every trial is a nested MLflow run; write the best as a proposal."""
    import optuna  # optional and slow to import: only `train.py --tune` needs it

    if spec.estimator != "LGBMRegressor":
        raise UserError(f"--tune searches LightGBM candidates; {spec.name} is a {spec.estimator}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = tracking.connect(settings)
    experiment_id = tracking.ensure_experiment(
        client, settings.experiment_name, settings.mlflow_artifact_location
    )
    tags = {RUN_TYPE_TAG: TUNING_RUN_TYPE, "candidate": spec.name, "git_commit": tracking.git_commit()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"Tuning {spec.name}", tags=tags) as parent:
        mlflow.log_params(
            {
                "trials": trials,
                "cv_folds": settings.cv_folds,
                "random_state": settings.random_state,
                "sampler": "TPE",
                "estimator_scale": settings.estimator_scale,
            }
        )

        def objective(trial: Any) -> float:
            params = {**spec.params, **suggest_lightgbm(trial)}
            score = cv_r2(replace(spec, params=params), x_train, y_train, settings)
            with mlflow.start_run(
                experiment_id=experiment_id,
                run_name=f"trial {trial.number}",
                nested=True,
                tags={RUN_TYPE_TAG: "tuning-trial", "candidate": spec.name},
            ):
                mlflow.log_params(params)
                mlflow.log_metric("cv_r2_mean", score)
            logger.info("trial %d: CV R2 %.4f", trial.number, score)
            return score

        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=settings.random_state)
        )
        study.optimize(objective, n_trials=trials)
        best = {**spec.params, **study.best_params}
        mlflow.log_params({f"best_{key}": value for key, value in study.best_params.items()})
        mlflow.log_metric("best_cv_r2_mean", study.best_value)
    write_proposal(spec, best, study.best_value, trials, parent.info.run_id, proposal_path)
    return TuningResult(parent.info.run_id, best, float(study.best_value), trials, proposal_path)


def write_proposal(
    spec: CandidateSpec, params: dict[str, Any], score: float, trials: int, run_id: str, path: Path
) -> None:
    """The best parameters as a candidates.yaml entry, for review (nothing reads this file by itself)."""
    header = (
        f"# Proposal from `train.py --tune {trials}` on {datetime.now(UTC):%Y-%m-%d} (MLflow run"
        f" {run_id}):\n# best {spec.name} parameters by {'K'}-fold R2 on the training split = {score:.4f}.\n#"
        " Review, then copy the params into housing/training/candidates.yaml; the default pipeline then"
        " reproduces\n# the result without searching.\n"
    )
    entry = {
        spec.name: {
            "description": spec.description,
            "estimator": spec.estimator,
            "features": spec.features,
            "params": {
                key: float(value) if isinstance(value, float) else value for key, value in params.items()
            },
        }
    }
    payload = (header + yaml.safe_dump(entry, sort_keys=False)).encode()
    write_atomic(path, lambda handle: handle.write(payload))
