"""Champion and challenger on live traffic: how the live evidence rule behaves, on real districts and real
models.

In process, with the same functions the monitor and `promote.py --from-shadow` use (decide_challenger on both
models' squared errors on the same labelled requests, one per district), judged again after every --step
labelled requests as a monitor running now and then would (so repeated looks are counted, not hidden):

1. A clearly worse challenger (the registered linear model) against production under baseline traffic, 20
   seeds: how often it is promoted (goal 0), dropped, and after how many labelled requests.
2. Equal challengers, 200 seeded trials: (i) the production version itself registered again (identical
   predictions), (ii) an exchangeable pair: on each request a coin decides whether the champion gets
   production's prediction and the challenger the linear model's, or the reverse, so both are the same
   model in distribution. How often the challenger is promoted within --max-requests (goal <= 5 %), and how
   often the offline gate's one-look interval would have been, re-checked at every look.
3. Market inflation (prices x 1.3) in promotion mode shadow: the retrained winner (fit as bench/monitor.py
   does) in shadow against production on fresh inflated traffic: labelled requests needed until it is
   promoted.
4. The canary's share at 10 % over 5,000 request ids, and that a key's model never changes.

Needs a trained registry (`make pipeline`): --tracking-uri / --artifacts-dir default to the settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from bench.monitor import labelled_window, retrain_and_gate
from housing.config.settings import Settings, get_settings
from housing.data.dataset import load_split
from housing.data.digests import row_digests
from housing.monitoring.traffic import scenario_rows
from housing.registry.live_policy import decide_challenger
from housing.registry.promotion_policy import paired_bootstrap
from housing.registry.versions import all_versions, get_version_by_alias, load_version, registry_client
from housing.schema import FEATURE_NAMES
from housing.serving.shadow import routes_to_challenger
from housing.store.retrain_evidence import base_districts, new_evidence

Predict = Callable[[pd.DataFrame], np.ndarray]


def one_look_promotes(
    champion: np.ndarray, challenger: np.ndarray, actual: np.ndarray, settings: Settings, step: int
) -> bool:
    """Whether the one-look rule (the offline gate's paired bootstrap interval), re-checked after every
    ``step`` labelled requests, would ever have promoted: what the time-uniform interval is there to
    prevent."""
    for seen in range(max(step, settings.gate_min_labelled_rows), len(actual) + 1, step):
        champion_se, challenger_se = (
            (actual[:seen] - champion[:seen]) ** 2,
            (actual[:seen] - challenger[:seen]) ** 2,
        )
        if paired_bootstrap(
            champion_se,
            challenger_se,
            None,
            samples=settings.gate_bootstrap_samples,
            confidence=settings.gate_confidence,
            seed=settings.random_state,
        ).beyond_noise:
            return True
    return False


def first_verdict(
    champion: np.ndarray, challenger: np.ndarray, actual: np.ndarray, settings: Settings, step: int
) -> tuple[str, int]:
    """Judge after every ``step`` labelled requests (rows already one per district) until a verdict; (action,
    requests)."""
    rule: dict[str, Any] = {
        "champion": "p",
        "challenger": "c",
        "min_rows": settings.gate_min_labelled_rows,
        "confidence": settings.gate_confidence,
        "waited_hours": 1.0,
        "max_wait_hours": settings.shadow_max_wait_hours,
    }
    for seen in range(step, len(actual) + 1, step):
        verdict = decide_challenger(
            (actual[:seen] - champion[:seen]) ** 2, (actual[:seen] - challenger[:seen]) ** 2, **rule
        )
        if verdict.action != "wait":
            return verdict.action, seen
    return "wait", len(actual)


def traffic(settings: Settings, scenario: str, count: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``count`` labelled requests of real test-split districts shaped by ``scenario``, one per district."""
    split = load_split(settings.split_dir)
    x, y = scenario_rows(split.x_test, split.y_test, scenario, count=count, seed=seed)
    keep = ~row_digests(x).duplicated().to_numpy()
    return x[keep].reset_index(drop=True), y[keep].to_numpy(dtype=np.float64)


def worse_challenger(
    settings: Settings, production: Predict, linear: Predict, args: argparse.Namespace
) -> None:
    outcomes = []
    for seed in range(20):
        x, y = traffic(settings, "baseline", args.max_requests, seed)
        outcomes.append(first_verdict(production(x), linear(x), y, settings, args.step))
    actions = [action for action, _ in outcomes]
    needed = [seen for action, seen in outcomes if action == "reject"]
    print(
        "1. linear challenger vs production, baseline traffic, 20 seeds: promoted"
        f" {actions.count('promote')}, dropped {actions.count('reject')}, undecided {actions.count('wait')};"
        f" dropped after {int(np.median(needed)) if needed else '-'} labelled requests (median; min"
        f" {min(needed, default=0)}, max {max(needed, default=0)})"
    )


def equal_challengers(
    settings: Settings, production: Predict, linear: Predict, args: argparse.Namespace
) -> None:
    identical = exchangeable = one_look = 0
    for trial in range(200):
        x, y = traffic(settings, "baseline", args.max_requests, 10_000 + trial)
        ours, theirs = production(x), linear(x)
        identical += first_verdict(ours, ours.copy(), y, settings, args.step)[0] == "promote"
        coin = np.random.default_rng(trial).random(len(y)) < 0.5
        champion, challenger = np.where(coin, ours, theirs), np.where(coin, theirs, ours)
        exchangeable += first_verdict(champion, challenger, y, settings, args.step)[0] == "promote"
        one_look += one_look_promotes(champion, challenger, y, settings, args.step)
    print(
        f"2. equal challengers, 200 trials, judged every {args.step} labelled requests up to"
        f" {args.max_requests:,}: promoted (i) identical predictions {identical} ({identical / 200:.1%}),"
        f" (ii) exchangeable pair {exchangeable} ({exchangeable / 200:.1%})   (goal <= 5 %); the one-look"
        " bootstrap interval re-checked at every look would have promoted the exchangeable challenger in"
        f" {one_look} ({one_look / 200:.1%})"
    )


def market_move(
    settings: Settings, production_model: Pipeline, production: Predict, args: argparse.Namespace
) -> None:
    split = load_split(settings.split_dir)
    features, labels = scenario_rows(split.x_test, split.y_test, "market-inflation", count=1500, seed=2)
    predict = lambda array: production(pd.DataFrame(array, columns=list(FEATURE_NAMES)))  # noqa: E731
    evidence = new_evidence(
        labelled_window(features, labels, predict, 5_000_000), base_districts(split.x_train)
    )
    _, sets, challenger, gate = retrain_and_gate(settings, split, production_model, evidence.rows)
    needed = []
    for seed in range(10):
        x, y = traffic(settings, "market-inflation", args.max_requests, 300 + seed)
        needed.append(
            first_verdict(
                production(x), np.asarray(challenger.predict(x[list(FEATURE_NAMES)])), y, settings, args.step
            )
        )
    promoted = [seen for action, seen in needed if action == "promote"]
    print(
        "3. market inflation x1.3, promotion mode shadow: the retrained challenger (offline gate"
        f" {gate.describe()}) promoted from live evidence in {len(promoted)} of 10 seeds, after"
        f" {int(np.median(promoted)) if promoted else '-'} labelled requests (median; min"
        f" {min(promoted, default=0)}, max {max(promoted, default=0)})"
    )


def canary_share() -> None:
    ids = [uuid.uuid4().hex.encode() for _ in range(5_000)]
    share = np.mean([routes_to_challenger(key, 10) for key in ids])
    stable = all(routes_to_challenger(key, 10) == routes_to_challenger(key, 10) for key in ids)
    print(
        f"4. canary at 10 %: {share:.1%} of 5,000 request ids routed to the challenger; the same key the same"
        f" model: {stable}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--artifacts-dir", default=None)
    parser.add_argument(
        "--step", type=int, default=50, help="Labelled requests between two looks (a monitor run)."
    )
    parser.add_argument("--max-requests", type=int, default=1_000)
    args = parser.parse_args()
    settings = get_settings(tracking_uri=args.tracking_uri, artifacts_dir=args.artifacts_dir)
    client = registry_client(settings.tracking_uri)
    production_version = get_version_by_alias(client, settings.model_name, settings.production_alias)
    linear_versions = [
        v for v in all_versions(client, settings.model_name) if v.tags.get("candidate") == "linear_regression"
    ]
    if production_version is None or not linear_versions:
        raise SystemExit(
            "needs a production version and a registered linear_regression candidate: run make pipeline first"
        )
    production_model = load_version(client, production_version)
    linear_model = load_version(client, linear_versions[-1])

    def production(x: pd.DataFrame) -> np.ndarray:
        return np.asarray(production_model.predict(x[list(FEATURE_NAMES)]), dtype=np.float64)

    def linear(x: pd.DataFrame) -> np.ndarray:
        return np.asarray(linear_model.predict(x[list(FEATURE_NAMES)]), dtype=np.float64)

    print(
        f"# bench/live.py — {os.cpu_count()} CPUs, production version {production_version.version}, evidence"
        f" rule: >= {settings.gate_min_labelled_rows} paired labelled requests,"
        f" {settings.gate_confidence:.0%} time-uniform paired interval, judged every {args.step} labelled"
        " requests"
    )
    worse_challenger(settings, production, linear, args)
    equal_challengers(settings, production, linear, args)
    market_move(settings, production_model, production, args)
    canary_share()
    return 0


if __name__ == "__main__":
    sys.exit(main())
