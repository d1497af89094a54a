"""Accuracy across split seeds: reruns preprocess + train for each seed and prints seed, R2, RMSE, fit
seconds.

Each seed gets the real stage scripts (preprocess.py --random-state S, train.py --random-state S) against a
temp MLflow store; the figures are the test-split metrics train.py logged. The split seed is the only thing
that changes from one seed to the next (checked against the split.json preprocess writes).

Two groups of seeds, reported apart:

- chosen-on seeds 42 and 0-4: the LightGBM settings in housing/training/candidates.yaml were chosen by
  comparing R2 on these seeds' test splits, so their figures flatter the model. The accuracy targets (mean
  R2 >= 0.880 over 0-4; R2 >= 0.885 / RMSE <= 0.390 on split seed 42, every stage's default) are on them.
- untouched seeds 101-105: no choice of any setting was made on their splits; their mean R2 and RMSE are
  the honest accuracy figure and get a line of their own.

    python -m bench.quality [--seeds 42 0 1 2 3 4 101 102 103 104 105] [--candidates lightgbm_spatial
    gradient_boosting]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient

PROJECT_DIR = Path(__file__).resolve().parent.parent

CHOSEN_ON_SEEDS = (42, 0, 1, 2, 3, 4)
"""Split seeds whose test splits the candidates.yaml LightGBM settings were chosen on (see the comment
there)."""
TARGET_SEEDS = (0, 1, 2, 3, 4)
"""The accuracy target: mean R2 >= 0.880 over these seeds (a subset of CHOSEN_ON_SEEDS)."""
UNTOUCHED_SEEDS = (101, 102, 103, 104, 105)
"""Split seeds no choice was made on: never used to pick a hyperparameter, feature or candidate."""


def run(script: str, *args: str, env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / script), *args], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"{script} failed:\n{result.stderr}")


def seed_group(seed: int) -> str:
    """``chosen-on`` for a seed the settings were chosen on, else ``untouched``."""
    return "chosen-on" if seed in CHOSEN_ON_SEEDS else "untouched"


def mean_line(label: str, results: list[tuple[int, float, float, float]], note: str) -> str:
    """One summary line: mean R2 and RMSE over ``results``, with the seeds named."""
    seeds = ", ".join(str(r[0]) for r in results)
    return (
        f"{label}: mean R2 {statistics.mean(r[1] for r in results):.4f}, mean RMSE"
        f" {statistics.mean(r[2] for r in results):.4f} over {len(results)} seeds ({seeds}); {note}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[*CHOSEN_ON_SEEDS, *UNTOUCHED_SEEDS],
        help=(
            "Split seeds (preprocess.py/train.py --random-state) [default 42 0-4, then the untouched"
            " 101-105]."
        ),
    )
    parser.add_argument("--candidates", nargs="+", default=["lightgbm_spatial"])
    parser.add_argument(
        "--source",
        default=os.environ.get("HOUSING_DATA_SOURCE")
        or str(PROJECT_DIR.parent / "shared/data/california_housing.csv"),
    )
    args = parser.parse_args()
    rows: dict[str, list[tuple[int, float, float, float]]] = {name: [] for name in args.candidates}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOUSING_", "MLFLOW_"))}
        env.update(
            MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
            HOUSING_ARTIFACTS_DIR=f"{tmp}/artifacts",
            HOUSING_DATA_SOURCE=args.source,
        )
        run("load_data.py", env=env)
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        for seed in args.seeds:
            run("preprocess.py", "--random-state", str(seed), env=env)
            split_seed = json.loads((Path(tmp) / "artifacts/split/split.json").read_text())["random_state"]
            if split_seed != seed:
                raise SystemExit(
                    f"preprocess.py --random-state {seed} wrote a split with random_state {split_seed}"
                )
            run("train.py", "--random-state", str(seed), "--candidates", *args.candidates, env=env)
            experiment = client.get_experiment_by_name("California-Housing-Regression")
            assert experiment is not None, "train.py created no experiment"
            parent = client.search_runs(
                [experiment.experiment_id],
                "tags.`housing.run_type` = 'training'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )[0]
            for child in client.search_runs(
                [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
            ):
                m = child.data.metrics
                rows[child.info.run_name].append((seed, m["r2"], m["rmse"], m["fit_seconds"]))
            print(f"seed {seed} done", file=sys.stderr)

    print(f"# bench/quality.py — preprocess + train per split seed, {os.cpu_count()} CPUs")
    print(
        "# chosen-on: the candidates.yaml settings were chosen on these test splits"
        f" ({', '.join(map(str, CHOSEN_ON_SEEDS))}); untouched: no choice was made on them"
    )
    for name, results in rows.items():
        print(f"\n{name}\n{'seed':>6} {'R2':>8} {'RMSE':>8} {'fit s':>7}  splits")
        for seed, r2, rmse, seconds in results:
            print(f"{seed:>6} {r2:>8.4f} {rmse:>8.4f} {seconds:>7.1f}  {seed_group(seed)}")
        target = [r for r in results if r[0] in TARGET_SEEDS]
        if target:
            print(
                mean_line(
                    "seeds 0-4 (chosen-on)",
                    target,
                    "target R2 >= 0.880; optimistic, the settings were chosen on these splits",
                )
            )
        untouched = [r for r in results if seed_group(r[0]) == "untouched"]
        if untouched:
            print(mean_line("untouched seeds", untouched, "no choice was made on these splits"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
