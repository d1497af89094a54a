"""Monitor wall time on 10k / 100k / 1M logged rows, how soon each traffic scenario is flagged, and false alarms.

1. Wall time: a temp prediction log is filled with resampled real held-out rows (predicted by the
   production model, half of them labelled), then `monitor.py --window N --dry-run` runs as a
   subprocess, end to end (start-up, reading the log, the reference, Evidently, reports, MLflow).
2. Detection: traffic of each simulate_traffic.py scenario (the same row shaping) is appended in steps
   of --step requests, predicted by the production model, labelled at once; after each step the monitor's
   own decision function judges the last `monitor_window` rows. Prints the first request count flagged.
3. False alarms: 20 independent baseline windows of `monitor_window` rows, judged the same way.

Needs a trained registry on a local SQLite store (`make pipeline`): --tracking-uri / --artifacts-dir
default to the settings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from housing.config import Settings, get_settings
from housing.data import load_split
from housing.drift_report import PREDICTION, WindowFigures, evaluate_window, reference_frame
from housing.inference import fast_predict_or_default
from housing.prediction_log import PredictionLog, prediction_rows
from housing.registry import load_model
from housing.retrain_policy import RetrainThresholds, decide
from housing.schema import TARGET
from simulate_traffic import SCENARIOS, scenario_rows

PROJECT_DIR = Path(__file__).resolve().parent.parent


def fill_log(url: str, features: pd.DataFrame, labels: pd.Series, predictions: np.ndarray, labelled_share: float) -> None:
    """Write served-looking rows (and labels for a share of them) straight into a prediction log."""
    from sqlalchemy import insert

    from housing.prediction_log import feedback_table

    log = PredictionLog(url, max_batch_rows=50_000)
    log.start()
    start = datetime.now(UTC) - timedelta(seconds=len(features) / 1000)
    ids = [f"{i:032x}" for i in range(len(features))]
    values = features.to_numpy(dtype=np.float64)
    for chunk in range(0, len(features), 50_000):
        stop = min(chunk + 50_000, len(features))
        stamp = log.timestamp(start + timedelta(seconds=chunk / 1000))
        log.append(prediction_rows(ids[chunk:stop], values[chunk:stop], predictions[chunk:stop].tolist(), model_name="CaliforniaHousing",
                                   model_version="bench", latency_ms=1.0, created_at=stamp))
        log.flush()
    rng = np.random.default_rng(0)
    chosen = np.flatnonzero(rng.random(len(features)) < labelled_share)
    with log.engine.begin() as connection:
        connection.execute(insert(feedback_table), [{"request_id": ids[i], "actual": float(labels.iloc[i]), "received_at": start} for i in chosen])
    log.close()


def window_figures(reference: pd.DataFrame, features: pd.DataFrame, labels: pd.Series, predict: Callable[[np.ndarray], np.ndarray],
                   settings: Settings) -> WindowFigures:
    """The monitor's figures for one window of served-looking rows, predicted by ``predict``."""
    current = features.reset_index(drop=True).copy()
    current[PREDICTION] = predict(current.to_numpy(dtype=np.float64))
    current[TARGET.name] = labels.to_numpy()
    return evaluate_window(reference, current, settings)[1]


def main() -> int:
    """Wall time per log size, detection per scenario, false alarms; 0 on success, 1 if a monitor run failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--artifacts-dir", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--step", type=int, default=250)
    parser.add_argument("--max-requests", type=int, default=4_000)
    args = parser.parse_args()
    settings = get_settings(tracking_uri=args.tracking_uri, artifacts_dir=args.artifacts_dir)
    split = load_split(settings.split_dir)
    model = load_model(f"models:/{settings.model_name}@{settings.production_alias}", settings.tracking_uri)
    predict, _ = fast_predict_or_default(model)
    print(f"# bench/monitor.py — {os.cpu_count()} CPUs, reference = training split ({len(split.x_train):,} rows), "
          f"window {settings.monitor_window:,}, drift {settings.drift_method} > {settings.drift_threshold}")

    # 1. wall time of the whole monitor run
    print(f"\n{'logged rows':>12} {'monitor.py seconds':>19}   (--window = all rows, --dry-run, 50% labelled)")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
            features, labels = scenario_rows(split.x_test, split.y_test, "baseline", count=size, seed=size)
            fill_log(f"sqlite:///{tmp}/log.db", features, labels, predict(features.to_numpy(dtype=np.float64)), 0.5)
            # the monitor reads a copy of the registry and of the split, so its runs and reports stay in tmp
            shutil.copy(settings.tracking_uri.removeprefix("sqlite:///"), f"{tmp}/mlflow.db")
            shutil.copytree(settings.split_dir, f"{tmp}/artifacts/split")
            shutil.copytree(settings.data_dir, f"{tmp}/artifacts/data")
            env = {k: v for k, v in os.environ.items() if not k.startswith("HOUSING_")}
            env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", HOUSING_ARTIFACTS_DIR=f"{tmp}/artifacts",
                       HOUSING_PREDICTION_LOG_URL=f"sqlite:///{tmp}/log.db")
            started = time.perf_counter()
            result = subprocess.run([sys.executable, str(PROJECT_DIR / "monitor.py"), "--window", str(size), "--dry-run"],
                                    check=False, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                print(result.stdout, result.stderr)
                return 1
            print(f"{size:>12,} {seconds:>19.1f}")

    # 2. detection per scenario
    reference = reference_frame(split.x_train, split.y_train, model)
    thresholds = RetrainThresholds.from_settings(settings)
    print(f"\n{'scenario':<18} {'flagged after':>14}   reasons at that point (every request labelled at once, step {args.step})")
    for scenario in SCENARIOS:
        features, labels = scenario_rows(split.x_test, split.y_test, scenario, count=args.max_requests, seed=7)
        flagged = None
        for served in range(args.step, args.max_requests + 1, args.step):
            window = slice(max(0, served - settings.monitor_window), served)
            figures = window_figures(reference, features.iloc[window], labels.iloc[window], predict, settings)
            decision = decide(figures, thresholds)
            if decision.retrain:
                flagged = (served, "; ".join(decision.reasons))
                break
        if flagged:
            print(f"{scenario:<18} {f'{flagged[0]:,} requests':>14}   {flagged[1]}")
        else:
            drifted = ", ".join(figures.drifted_features) or "none"
            print(f"{scenario:<18} {'never':>14}   (up to {args.max_requests:,}) last window: drifted features {drifted} "
                  f"({figures.drift_share:.0%}), prediction drifted: {figures.prediction_drifted}, RMSE {figures.rmse:.3f}, R2 {figures.r2:.3f}")

    # 3. false alarms over 20 baseline windows
    alarms = 0
    for seed in range(20):
        features, labels = scenario_rows(split.x_test, split.y_test, "baseline", count=settings.monitor_window, seed=1000 + seed)
        alarms += decide(window_figures(reference, features, labels, predict, settings), thresholds).retrain
    print(f"\nfalse alarms: {alarms} of 20 baseline windows of {settings.monitor_window:,} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
