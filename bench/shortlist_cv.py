"""The LightGBM shortlist re-scored by K-fold cross-validation on the training split only.

housing/candidates.yaml's lightgbm_spatial settings were picked from this shortlist by comparing R2 on the
test splits of seeds 42 and 0-4 (bench/quality.py). This script makes the same comparison the way a choice
should be made: each configuration is scored by the project's K-fold CV (housing/training/tuning.py's
``cv_r2``) on the training rows of one split only; no test row is read. It prints mean CV R2 per
configuration, the serving cost the compiled kernel pays (trees x depth, when the depth is bounded) and where
the chosen settings stand.

    python -m bench.shortlist_cv [--random-state 42] [--folds 5] [--estimator-scale 1.0] [--only chosen ...]

Sequential, one process: about 8 configurations x 5 folds of a LightGBM fit with spatial features.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from housing.config.settings import get_settings
from housing.data.dataset import read_source, split_dataset
from housing.schema import validate_frame
from housing.training.candidates import load_candidate_specs
from housing.training.tuning import cv_r2

PROJECT_DIR = Path(__file__).resolve().parent.parent

CHOSEN = "chosen"
SHORTLIST: dict[str, dict[str, Any]] = {
    CHOSEN: {},  # candidates.yaml as it is: 600 trees, lr 0.05, 47 leaves, depth 9
    "800/0.04/47 depth 10": {"n_estimators": 800, "learning_rate": 0.04, "num_leaves": 47, "max_depth": 10},
    "800/0.04/47 unbounded": {"n_estimators": 800, "learning_rate": 0.04, "num_leaves": 47, "max_depth": -1},
    "1000/0.03/63 unbounded": {
        "n_estimators": 1000,
        "learning_rate": 0.03,
        "num_leaves": 63,
        "max_depth": -1,
    },
    "600/0.05/63 unbounded": {"n_estimators": 600, "learning_rate": 0.05, "num_leaves": 63, "max_depth": -1},
    "500/0.06/127 unbounded": {
        "n_estimators": 500,
        "learning_rate": 0.06,
        "num_leaves": 127,
        "max_depth": -1,
    },
    "1000/0.035/31 unbounded": {
        "n_estimators": 1000,
        "learning_rate": 0.035,
        "num_leaves": 31,
        "max_depth": -1,
    },
    "700/0.045/47 unbounded": {
        "n_estimators": 700,
        "learning_rate": 0.045,
        "num_leaves": 47,
        "max_depth": -1,
    },
}
"""The configurations the choice of the candidates.yaml settings was made among; every other parameter as in
candidates.yaml."""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--random-state", type=int, default=42, help="Split seed whose training rows are used [default 42]."
    )
    parser.add_argument("--folds", type=int, default=5, help="CV folds on the training split [default 5].")
    parser.add_argument(
        "--estimator-scale",
        type=float,
        default=1.0,
        help="Multiplies tree counts (< 1 only for a quick check).",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SHORTLIST),
        default=list(SHORTLIST),
        help="Score these configurations only.",
    )
    parser.add_argument(
        "--source",
        default=os.environ.get("HOUSING_DATA_SOURCE")
        or str(PROJECT_DIR.parent / "shared/data/california_housing.csv"),
    )
    args = parser.parse_args()
    settings = get_settings(
        random_state=args.random_state, cv_folds=args.folds, estimator_scale=args.estimator_scale
    )
    spec = load_candidate_specs(settings.candidates_path, ["lightgbm_spatial"])[0]
    frame = validate_frame(read_source(args.source))
    x_train, _, y_train, _ = split_dataset(
        frame, test_size=settings.test_size, random_state=settings.random_state
    )  # test part unused
    scores: dict[str, float] = {}
    for name in args.only:
        started = time.perf_counter()
        scores[name] = cv_r2(
            replace(spec, params={**spec.params, **SHORTLIST[name]}), x_train, y_train, settings
        )
        print(f"{name}: CV R2 {scores[name]:.4f} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    print(
        f"# bench/shortlist_cv.py — lightgbm_spatial shortlist, {args.folds}-fold CV on the {len(x_train):,}"
        f" training rows of split {args.random_state} (no test row read), estimator scale"
        f" {args.estimator_scale}"
    )
    print(f"\n{'configuration':<26} {'CV R2':>7} {'vs best':>8} {'trees x depth':>14}")
    best = max(scores.values())
    for name, score in sorted(scores.items(), key=lambda item: -item[1]):
        params = {**spec.params, **SHORTLIST[name]}
        depth = params.get("max_depth", -1)
        cost = f"{params['n_estimators'] * depth:,}" if depth > 0 else "unbounded"
        print(f"{name:<26} {score:>7.4f} {score - best:>+8.4f} {cost:>14}")
    if CHOSEN in scores:
        print(
            f"\ncandidates.yaml's settings: {scores[CHOSEN] - best:+.4f} CV R2 against the best of the"
            " shortlist"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
