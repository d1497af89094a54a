"""How honest the prediction intervals are, and how fast the labels bring them back after a market move.

1. **Coverage and width on the real split** and on the untouched split seeds: for each seed, preprocess's
   split and the production candidate (lightgbm_spatial) trained as train.py trains it, its interval
   calibrated on the training rows' out-of-fold predictions as train.py does; then, on the test split (never
   seen by the calibration): the share of true values inside the range, overall and per region and income
   band, and the mean width beside a constant-width split-conformal interval reaching the same coverage
   (the width a range without a difficulty model needs).
2. **Recovery under each traffic scenario**: rows of the test split shaped by the simulator's scenarios
   (baseline, income shift, each subpopulation, market inflation x1.3), served one by one with the range the
   API would serve, each label then moving the online state as the API does. Printed: the coverage with the
   calibrated range alone (static), with the online state (online), the online coverage after the first 200
   labels, the online ranges' mean width relative to the static ones, and the labels the online state needs
   before the next 500 requests' coverage is within 2 points of the level.

Serving cost (rps and p99 with and without intervals) is bench/serve.py's (a4) run, beside (a) in the same
run. Needs the real CSV.

    python -m bench.intervals [--seeds 42 101 102 103 104 105] [--requests 1500]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from housing.config.settings import Settings
from housing.data.dataset import read_source, split_dataset
from housing.monitoring.segments import REGION_NAMES, region_codes, segment_masks
from housing.monitoring.traffic import SUBPOPULATIONS, scenario_rows
from housing.schema import FEATURE_NAMES
from housing.serving.intervals import OnlineScale, SegmentScale, after_label, serve_interval
from housing.training.candidates import load_candidate_specs
from housing.training.fitting import fit_candidates
from housing.training.intervals import fit_interval

WARM_UP = 200
"""Labels the online state has had before the recovered coverage is measured."""
WINDOW = 500
"""Fresh requests the recovered coverage is judged on after n labels (the 'labels to ±2 pts' column)."""
STEP = 50


def train(settings: Settings, frame, seed: int):
    """The production candidate and its interval, trained on seed ``seed``'s split as train.py does."""
    x_train, x_test, y_train, y_test = split_dataset(frame, test_size=settings.test_size, random_state=seed)
    [spec] = load_candidate_specs(settings.candidates_path, ["lightgbm_spatial"])
    [fitted] = fit_candidates(
        [spec],
        x_train,
        y_train,
        outlier_quantiles=settings.outlier_quantiles,
        estimator_scale=1.0,
        cv_folds=settings.cv_folds,
        random_state=seed,
        n_jobs=settings.n_jobs,
    )
    assert fitted.out_of_fold is not None
    interval = fit_interval(x_train, y_train, fitted.out_of_fold, settings.interval_level, None, seed)
    return fitted.pipeline, serve_interval(interval, 1.0), x_test, y_test


def coverage_table(settings: Settings, frame, seeds: list[int]) -> dict[int, tuple]:
    trained = {}
    print(f"{'seed':>5} {'coverage':>9} {'width':>7} {'constant':>9} {'narrower':>9}  worst segment")
    for seed in seeds:
        started = time.perf_counter()
        pipeline, served, x_test, y_test = train(settings, frame, seed)
        values = x_test[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
        predicted = pipeline.predict(x_test)
        low, high = served.bounds(values, predicted)
        truth = y_test.to_numpy()
        inside = (truth >= low) & (truth <= high)
        coverage, width = float(inside.mean()), float(np.mean(high - low))
        constant = 2 * float(np.quantile(np.abs(truth - predicted), coverage))
        segments = {name: float(inside[mask].mean()) for name, mask in segment_masks(x_test).items()}
        worst = min(segments, key=lambda name: segments[name])
        print(
            f"{seed:>5} {coverage:>8.1%} {width:>7.3f} {constant:>9.3f} {1 - width / constant:>8.1%}"
            f"  {worst} {segments[worst]:.1%} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        print("       " + ", ".join(f"{name} {share:.1%}" for name, share in segments.items()))
        trained[seed] = (pipeline, served, x_test, y_test, coverage, width, constant)
    return trained


def recovery(pipeline, served, x_test, y_test, scenario: str, requests: int, level: float) -> str:
    """Coverage of the scenario's labelled requests with the calibrated range alone, and with the online
    state moved by every label before the next request (as the API does), overall and after the first
    WARM_UP labels; the online ranges' mean width relative to the calibrated ones."""
    kind, _, subpopulation = scenario.partition(":")
    features, labels = scenario_rows(
        x_test, y_test, kind, count=requests, seed=7, subpopulation=subpopulation or "high-income"
    )
    values = features[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    predicted = pipeline.predict(features)
    truth = labels.to_numpy()
    regions = np.asarray(REGION_NAMES)[region_codes(values)]
    served.online = OnlineScale()
    static_low, static_high = served.bounds(values, predicted)
    static = (truth >= static_low) & (truth <= static_high)
    state: dict[str, SegmentScale] = {}
    hits, widths = [], []
    for row in range(requests):
        regional = {name: scale for name, scale in state.items() if name != "all"}
        served.online = OnlineScale(state.get("all", SegmentScale()), regional)
        low, high = served.bounds(values[row : row + 1], predicted[row : row + 1])
        missed = not low[0] <= truth[row] <= high[0]
        hits.append(not missed)
        widths.append(high[0] - low[0])
        ratio = float(np.log(max(truth[row], 1e-6) / predicted[row]))
        for segment in ("all", regions[row]):
            state[segment] = after_label(state.get(segment, SegmentScale()), missed, ratio, level)
    served.online = OnlineScale()
    online = np.asarray(hits)
    width_ratio = float(np.mean(widths) / np.mean(static_high - static_low))
    recovered = next(
        (
            f"{labels:,}"
            for labels in range(0, requests - WINDOW + 1, STEP)
            if abs(online[labels : labels + WINDOW].mean() - level) <= 0.02
        ),
        f"> {requests - WINDOW:,}",
    )
    return (
        f"{static.mean():>7.1%} {online.mean():>7.1%} {online[WARM_UP:].mean():>12.1%} {width_ratio:>10.2f}"
        f" {recovered:>16}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 101, 102, 103, 104, 105])
    parser.add_argument("--requests", type=int, default=1_500, help="Labelled requests per scenario.")
    parser.add_argument(
        "--source",
        default=os.environ.get("HOUSING_DATA_SOURCE", "../shared/data/california_housing.csv"),
    )
    args = parser.parse_args()
    settings = Settings()
    frame = read_source(args.source)
    print(
        f"# bench/intervals.py: {os.cpu_count()} CPUs, level {settings.interval_level:.0%}, lightgbm_spatial,"
        " calibrated on its training rows' out-of-fold predictions, judged on the test split\n"
    )
    trained = coverage_table(settings, frame, args.seeds)
    untouched = [seed for seed in args.seeds if seed != 42]
    if untouched:
        coverages = [trained[seed][4] for seed in untouched]
        narrower = [1 - trained[seed][5] / trained[seed][6] for seed in untouched]
        print(
            f"\nuntouched seeds {', '.join(map(str, untouched))}: mean coverage {np.mean(coverages):.1%},"
            f" mean width {np.mean(narrower):.1%} narrower than the constant-width interval at the same"
            " coverage"
        )
    pipeline, served, x_test, y_test = trained[args.seeds[0]][:4]
    level = settings.interval_level
    print(f"\nrecovery, seed {args.seeds[0]}, {args.requests:,} labelled requests per scenario:")
    print(
        f"  {'scenario':<34} {'static':>7} {'online':>7} {'after ' + str(WARM_UP):>12} {'width x':>10}"
        f" {'labels to ±2 pts':>16}"
    )
    scenarios = ("baseline", "income-shift", *(f"subpopulation:{name}" for name in SUBPOPULATIONS))
    for scenario in (*scenarios, "market-inflation"):
        found = recovery(pipeline, served, x_test, y_test, scenario, args.requests, level)
        print(f"  {scenario:<34} {found}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
