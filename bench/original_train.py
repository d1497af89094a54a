"""The original report's training stage, as its script did it, for bench/pipeline.py to time beside ours.

Its three models with scikit-learn's default settings (LinearRegression, RandomForestRegressor,
GradientBoostingRegressor, random_state 42), each in a pipeline behind a StandardScaler, scored by 5-fold
cross-validation on the training split, fitted on it, scored on the test split, and logged to MLflow with
its parameters, metrics and model (skops, as this project logs models). It reads the split this project's
preprocess.py wrote, so both runs start from the same rows.

    python -m bench.original_train --split-dir DIR --tracking-uri URI
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mlflow
import numpy as np
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from housing.data.dataset import load_split
from housing.registry.model_files import SKOPS_TRUSTED_TYPES

MODELS = {
    "LinearRegression": LinearRegression(),
    "RandomForest": RandomForestRegressor(random_state=42),
    "GradientBoosting": GradientBoostingRegressor(random_state=42),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split-dir", type=Path, required=True)
    parser.add_argument("--tracking-uri", required=True)
    args = parser.parse_args()
    split = load_split(args.split_dir)
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("original-report")
    started = time.perf_counter()
    with mlflow.start_run(run_name="Comparative Analysis"):
        for name, estimator in MODELS.items():
            with mlflow.start_run(run_name=name, nested=True):
                pipeline = Pipeline([("scaler", StandardScaler()), ("model", estimator)])
                cv = cross_val_score(pipeline, split.x_train, split.y_train, cv=5, scoring="r2")
                pipeline.fit(split.x_train, split.y_train)
                predicted = pipeline.predict(split.x_test)
                mlflow.log_params(estimator.get_params())
                mlflow.log_metrics(
                    {
                        "r2": r2_score(split.y_test, predicted),
                        "rmse": root_mean_squared_error(split.y_test, predicted),
                        "mae": mean_absolute_error(split.y_test, predicted),
                        "cv_r2_mean": float(np.mean(cv)),
                    }
                )
                mlflow.sklearn.log_model(
                    pipeline,
                    name="model",
                    serialization_format="skops",
                    skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
                )
    print(f"original report's train.py: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
