"""Time each stage and the whole load -> promote run, then print the per-model table.

Runs the four stage scripts as subprocesses with the real configuration into a fresh temp dir (its own
MLflow SQLite store and artifacts), so the figures are a cold run on this machine. Also measures the
in-process single-row predict latency of the promoted production pipeline.

Then times the original report's train.py on the same split (bench/original_train.py) and prints the ratio.

    python -m bench.pipeline [--source CSV] [--estimator-scale 1.0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from housing.data.artifacts import load_pickle
from housing.registry.versions import get_version_by_alias, load_version, registry_client
from housing.serving.compiled import fast_predict_or_default

PROJECT_DIR = Path(__file__).resolve().parent.parent

STAGES = ("load_data.py", "preprocess.py", "train.py", "promote.py")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source",
        default=os.environ.get(
            "HOUSING_DATA_SOURCE", str(PROJECT_DIR.parent / "shared/data/california_housing.csv")
        ),
    )
    parser.add_argument("--estimator-scale", default="1.0")
    parser.add_argument("--random-state", default="42")
    parser.add_argument(
        "--cv-folds", default=None, help="Override HOUSING_CV_FOLDS (default: the settings' default)."
    )
    parser.add_argument(
        "--keep", type=Path, help="Work in this dir and keep it (default: a temp dir, removed)."
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work_dir = args.keep or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOUSING_", "MLFLOW_"))}
        env.update(
            MLFLOW_TRACKING_URI=f"sqlite:///{work_dir / 'mlflow.db'}",
            HOUSING_ARTIFACTS_DIR=str(work_dir / "artifacts"),
            HOUSING_DATA_SOURCE=args.source,
            HOUSING_ESTIMATOR_SCALE=args.estimator_scale,
            HOUSING_RANDOM_STATE=args.random_state,
        )
        if args.cv_folds:
            env["HOUSING_CV_FOLDS"] = args.cv_folds
        timings = {}
        total_start = time.perf_counter()
        for stage in STAGES:
            start = time.perf_counter()
            result = subprocess.run(
                [sys.executable, str(PROJECT_DIR / stage)],
                env=env,
                cwd=work_dir,
                capture_output=True,
                text=True,
            )
            timings[stage] = time.perf_counter() - start
            if result.returncode != 0:
                print(result.stdout, result.stderr, sep="\n")
                print(f"{stage} failed (exit {result.returncode})")
                return 1
            if stage == "train.py":
                train_output = result.stdout
        total = time.perf_counter() - total_start
        original_start = time.perf_counter()
        original = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.original_train",
                "--split-dir",
                str(work_dir / "artifacts" / "split"),
                "--tracking-uri",
                f"sqlite:///{work_dir / 'original.db'}",
            ],
            env=env,
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
        )
        original_seconds = time.perf_counter() - original_start
        if original.returncode != 0:
            print(original.stdout, original.stderr, sep="\n")
            print(f"the original report's train.py failed (exit {original.returncode})")
            return 1

        print(
            f"# bench/pipeline.py — {os.cpu_count()} CPUs, estimator_scale {args.estimator_scale},"
            f" random_state {args.random_state}"
        )
        print(f"\n{'stage':<16} {'seconds':>8}")
        for stage, seconds in timings.items():
            print(f"{stage:<16} {seconds:>8.1f}")
        print(f"{'load -> promote':<16} {total:>8.1f}")
        print(
            "\nthe original report's train.py (its 3 models, defaults, 5-fold CV, MLflow logging with the"
            f" models), same run: {original_seconds:.1f} s; load -> promote / it:"
            f" {total / original_seconds:.2f}x (target <= 1.2x)"
        )
        print("\n" + train_output.strip())
        print("\n" + predict_latency(env))
    return 0


def predict_latency(env: dict[str, str], repeats: int = 2000) -> str:
    """p50/p99 of in-process single-row predict of the production pipeline, on real test rows: through
    ``pipeline.predict`` on a one-row DataFrame, and through the compiled path the API serves with."""
    client = registry_client(env["MLFLOW_TRACKING_URI"])
    production = get_version_by_alias(client, "CaliforniaHousing", "production")
    assert production is not None, "the pipeline promoted no production version"
    model = load_version(client, production)
    x_test = load_pickle(Path(env["HOUSING_ARTIFACTS_DIR"]) / "split" / "X_test.pkl")
    compiled, verified = fast_predict_or_default(model)
    frames = [x_test.iloc[[i % len(x_test)]] for i in range(repeats)]
    arrays = [frame.to_numpy(dtype=np.float64) for frame in frames]
    lines = []
    for label, predict, rows in (
        ("pipeline.predict, DataFrame row", model.predict, frames),
        (f"compiled path{'' if verified else ' (NOT verified: pipeline.predict)'}", compiled, arrays),
    ):
        for row in rows[:50]:
            predict(row)
        samples = []
        for row in rows:
            start = time.perf_counter()
            predict(row)
            samples.append(time.perf_counter() - start)
        p50, p99 = np.percentile(samples, [50, 99]) * 1000
        lines.append(
            f"single-row predict, {label}: p50 {p50:.3f} ms, p99 {p99:.3f} ms over {repeats} calls (target"
            " p50 <= 2 ms)"
        )
    return "production model, in process:\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
