"""Drive a running prediction API with real dataset rows and send the true labels back later.

A client, not part of production: it reads the dataset (--source, else the copy load_data.py stored, else
scikit-learn's downloader), takes the held-out (test) rows of the same
split preprocess makes, shapes them by scenario, POSTs them to /predict, then after --label-delay
seconds POSTs the true value of a --label-fraction of them to /feedback, with the labellers' bearer token:
--feedback-token, else HOUSING_FEEDBACK_TOKEN, else the token the API generated in
<artifacts>/secrets/feedback_token on its first start (so `make serve` then `make simulate` needs nothing).
Scenarios:

  baseline          held-out rows as they are (no drift)
  income-shift      MedInc x 1.2 (the seed's simulated drift), true labels
  subpopulation     only one real sub-population (--subpopulation high-income | bay-area), true labels
  market-inflation  features as they are, labels x --inflation (a price move only the error can reveal)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import pandas as pd
from tqdm import tqdm

from housing import cli
from housing.api.credentials import resolve_feedback_token
from housing.config import Settings
from housing.data.dataset import read_dataset, read_source, split_dataset
from housing.errors import UserError
from housing.monitoring.loss_estimation import MIN_SEGMENT_ROWS, region_of, segment_masks
from housing.schema import SPECS_BY_NAME, validate_frame

SCENARIOS = ("baseline", "income-shift", "subpopulation", "market-inflation")
SUBPOPULATIONS = {
    "high-income": lambda x: x["MedInc"] >= x["MedInc"].quantile(0.8),
    "bay-area": lambda x: region_of(x) == "Bay Area",
    "inland-low-income": lambda x: (region_of(x) == "Central Valley") & (x["MedInc"] < 3.0),
    "old-house": lambda x: x["HouseAge"] >= 45,
}
"""Rows of the held-out split a ``subpopulation`` scenario draws from (regions as the monitor's segments)."""


def scenario_rows(
    x: pd.DataFrame, y: pd.Series, scenario: str, *, count: int, seed: int, subpopulation: str = "high-income",
    inflation: float = 1.3,
) -> tuple[pd.DataFrame, pd.Series]:
    """``count`` real rows (sampled with replacement) shaped by ``scenario``: (features, true labels)."""
    if scenario == "subpopulation":
        mask = SUBPOPULATIONS[subpopulation](x)
        x, y = x[mask], y[mask]
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(x), count)
    features = x.iloc[picked].reset_index(drop=True)
    labels = y.iloc[picked].reset_index(drop=True)
    if scenario == "income-shift":
        features["MedInc"] = (features["MedInc"] * 1.2).clip(upper=SPECS_BY_NAME["MedInc"].maximum)
    elif scenario == "market-inflation":
        labels = labels * inflation
    return features, labels


@dataclass
class Outcome:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    labelled: int = 0
    label_failures: int = 0
    errors: list[str] = field(default_factory=list)
    squared_errors: list[float] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    """Which rows (index into the features sent) the squared errors belong to."""
    versions: Counter[str] = field(default_factory=Counter)
    """Responses by the model version that answered (two while a canary runs)."""


def feedback_headers(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    """The headers of every /feedback: ``Authorization: Bearer`` with --feedback-token, else the token the API
    uses (HOUSING_FEEDBACK_TOKEN or the kept file); none when no labels are sent or feedback is (unsafely) open."""
    token = args.feedback_token or resolve_feedback_token(settings)
    if token:
        return {"Authorization": f"Bearer {token}"}
    if args.label_fraction == 0 or settings.unsafe_open_feedback:
        return {}
    raise UserError(
        f"no feedback token to send labels with: start the API once (`make serve` writes one to {settings.feedback_token_path}), "
        "or set HOUSING_FEEDBACK_TOKEN or --feedback-token to the API's token (--label-fraction 0 sends no labels)"
    )


async def drive(args: argparse.Namespace, features: pd.DataFrame, labels: pd.Series, label_headers: dict[str, str]) -> Outcome:
    outcome = Outcome()
    rng = random.Random(args.seed)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(features)):
        queue.put_nowait(index)
    records = features.to_dict(orient="records")
    pending_labels: list[asyncio.Task[None]] = []
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    started = time.monotonic()
    progress = tqdm(total=len(records), desc=f"{args.scenario}", unit="req", disable=args.quiet or not sys.stderr.isatty())

    # Predictions and labels use separate connection pools, and at most --concurrency labels are in
    # flight, so a burst of labels never starves the predictions of connections.
    labels_in_flight = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(base_url=args.url, timeout=30) as client, \
            httpx.AsyncClient(base_url=args.url, timeout=30, headers=label_headers) as label_client:

        async def send_label(request_id: str, actual: float) -> None:
            """POST the label; retried on a 5xx or a transport error (the endpoint is idempotent), not on 4xx."""
            await asyncio.sleep(args.label_delay)
            async with labels_in_flight:
                await post_label(request_id, actual)

        async def post_label(request_id: str, actual: float) -> None:
            problem = ""
            for attempt in range(3):
                try:
                    response = await label_client.post("/feedback", json={"request_id": request_id, "actual": actual})
                except httpx.HTTPError as error:
                    problem = f"feedback {error!r}"
                else:
                    if response.status_code in (200, 201):
                        outcome.labelled += 1
                        return
                    problem = f"feedback {response.status_code} {response.text[:200]}"
                    if response.status_code < 500:
                        break
                await asyncio.sleep(0.5 * (attempt + 1))
            outcome.label_failures += 1
            outcome.errors.append(problem)

        async def worker() -> None:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if interval:
                    await asyncio.sleep(max(0.0, started + index * interval - time.monotonic()))
                outcome.sent += 1
                headers = {"X-Routing-Key": f"client-{index % args.clients}"} if args.clients else None
                try:
                    response = await client.post("/predict", json=records[index], headers=headers)
                except httpx.HTTPError as error:
                    outcome.failed += 1
                    outcome.errors.append(repr(error))
                    progress.update()
                    continue
                if response.status_code != 200:
                    outcome.failed += 1
                    outcome.errors.append(f"{response.status_code} {response.text[:200]}")
                else:
                    outcome.ok += 1
                    body = response.json()
                    outcome.versions[body["model_version"]] += 1
                    actual = float(labels.iloc[index])
                    outcome.squared_errors.append((body["MedHouseVal"] - actual) ** 2)
                    outcome.answered.append(index)
                    if rng.random() < args.label_fraction:
                        pending_labels.append(asyncio.create_task(send_label(body["request_id"], actual)))
                progress.update()

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        progress.close()
        if pending_labels:
            await asyncio.gather(*pending_labels)
    return outcome


def main(args: argparse.Namespace) -> int:
    settings = cli.settings_from_args(args)
    if args.scenario not in SCENARIOS:
        raise UserError(f"unknown scenario {args.scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if not 0.0 <= args.label_fraction <= 1.0:
        raise UserError("--label-fraction must be between 0 and 1")
    label_headers = feedback_headers(args, settings)
    frame = simulation_frame(settings)
    _, x_test, _, y_test = split_dataset(frame, test_size=settings.test_size, random_state=settings.random_state)
    features, labels = scenario_rows(
        x_test, y_test, args.scenario, count=args.requests, seed=args.seed, subpopulation=args.subpopulation, inflation=args.inflation
    )
    try:
        httpx.get(f"{args.url}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as error:
        raise UserError(f"the API at {args.url} does not answer ({error}); start it with `make serve`") from None
    started = time.monotonic()
    outcome = asyncio.run(drive(args, features, labels, label_headers))
    seconds = time.monotonic() - started
    rmse = float(np.sqrt(np.mean(outcome.squared_errors))) if outcome.squared_errors else float("nan")
    print(f"scenario {args.scenario}: {outcome.ok}/{outcome.sent} predictions ok ({outcome.failed} failed) in {seconds:.1f} s, "
          f"{outcome.labelled} labels sent ({outcome.label_failures} failed); RMSE against the true labels {rmse:.4f}")
    segments = segment_masks(features.iloc[outcome.answered])
    errors = np.asarray(outcome.squared_errors)
    by_segment = [f"{name} {np.sqrt(errors[mask].mean()):.4f} ({int(mask.sum()):,})" for name, mask in segments.items()
                  if mask.sum() >= MIN_SEGMENT_ROWS]
    print(f"RMSE against the true labels by segment: {'; '.join(by_segment) or 'no segment with enough rows'}")
    print(f"answered by model version: {', '.join(f'{v} ({n:,})' for v, n in sorted(outcome.versions.items())) or 'none'}")
    describe_challenger(args.url)
    for failure in outcome.errors[:3]:
        print(f"  e.g. {failure}", file=sys.stderr)
    return 0 if outcome.failed == 0 and outcome.label_failures == 0 else 1


def simulation_frame(settings: Settings) -> pd.DataFrame:
    """The dataset the rows come from: --source / HOUSING_DATA_SOURCE when given, else the copy load_data.py
    stored under the artifacts dir (so `make simulate` works offline after `make pipeline`), else scikit-learn's
    downloader."""
    if settings.data_source is None and settings.dataset_path.is_file():
        return read_dataset(settings.dataset_path)
    return validate_frame(read_source(settings.data_source))


def describe_challenger(url: str) -> None:
    """Say whether a challenger was scored in shadow (and answered a canary share), and what judges it."""
    try:
        challenger = httpx.get(f"{url}/model", timeout=5).json().get("challenger")
    except (httpx.HTTPError, ValueError):
        return
    if challenger:
        print(f"challenger: version {challenger['version']} ({challenger['candidate']}) scored every request in shadow"
              + (f" and answered {challenger['canary_percent']:g} % of them (canary)" if challenger["canary_percent"] else "")
              + "; once labels are back, `promote.py --from-shadow` (or the next monitor run) promotes or drops it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Base URL of the API [default http://127.0.0.1:8000]")
    parser.add_argument("--scenario", default="baseline", help=f"One of {', '.join(SCENARIOS)} [default baseline]")
    parser.add_argument("--requests", type=int, default=1000, help="Number of /predict requests [default 1000]")
    parser.add_argument("--rate", type=float, default=0.0, help="Requests per second; 0 = as fast as possible [default 0]")
    parser.add_argument("--concurrency", type=int, default=8, help="Requests in flight at once [default 8]")
    parser.add_argument("--label-delay", type=float, default=0.0, help="Seconds before a label is sent back [default 0]")
    parser.add_argument("--label-fraction", type=float, default=1.0, help="Share of predictions that get a label [default 1]")
    parser.add_argument("--subpopulation", choices=sorted(SUBPOPULATIONS), default="high-income")
    parser.add_argument("--inflation", type=float, default=1.3, help="Label multiplier of market-inflation [default 1.3]")
    parser.add_argument("--seed", type=int, default=0, help="Which rows are sampled [default 0]")
    parser.add_argument("--clients", type=int, default=0,
                        help="Simulated clients: request i carries X-Routing-Key client-(i mod N), so a canary keeps each "
                        "client on one model; 0 sends no key [default 0]")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    parser.add_argument("--feedback-token", default=None, metavar="TOKEN",
                        help="Bearer token of /feedback [env HOUSING_FEEDBACK_TOKEN; default: the API's generated "
                        "<artifacts>/secrets/feedback_token]; the environment keeps it out of the process list")
    cli.add_setting_flags(parser, "random_state", "test_size", "artifacts_dir")
    parser.add_argument("--source", dest="data_source", default=None, metavar="PATH_OR_URL",
                        help="The dataset [env HOUSING_DATA_SOURCE; default: the copy load_data.py stored in the artifacts "
                        "dir, else scikit-learn's downloader]")
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
