"""The traffic that drives the loop: real held-out rows shaped by a scenario, sent to a running API, and their
true labels sent back later through /feedback.

A client, not part of production: the simulator (``simulate_traffic.py``), the benchmarks and the tests send
their rows from :func:`scenario_rows`, so every one of them shapes traffic the same way.

  baseline          held-out rows as they are (no drift)
  income-shift      MedInc x 1.2 (the original report's simulated drift), true labels
  subpopulation     only one real sub-population (high-income, bay-area, inland-low-income, old-house), true
  labels market-inflation  features as they are, labels x inflation (a price move only the error can reveal)
"""

from __future__ import annotations

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

from housing.config.settings import Settings
from housing.data.dataset import read_dataset, read_source
from housing.monitoring.segments import MIN_SEGMENT_ROWS, region_of, segment_masks
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
    x: pd.DataFrame,
    y: pd.Series,
    scenario: str,
    *,
    count: int,
    seed: int,
    subpopulation: str = "high-income",
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


@dataclass(frozen=True)
class TrafficPlan:
    """How the rows are sent: where, how fast, how many at once, and which share of them gets its label
    back."""

    url: str
    scenario: str = "baseline"
    rate: float = 0.0
    """Requests per second; 0 sends as fast as the concurrency allows."""
    concurrency: int = 8
    label_delay: float = 0.0
    label_fraction: float = 1.0
    seed: int = 0
    clients: int = 0
    """Simulated clients: request i carries ``X-Routing-Key: client-<i mod clients>``; 0 sends no key."""
    quiet: bool = False


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

    def rmse(self) -> float:
        """RMSE of every answered prediction against the true label kept for it (NaN when none was
        answered)."""
        return float(np.sqrt(np.mean(self.squared_errors))) if self.squared_errors else float("nan")

    def rmse_by_segment(self, features: pd.DataFrame) -> str:
        """The same RMSE per region and income band (segments with enough answered rows), as one line."""
        segments = segment_masks(features.iloc[self.answered])
        errors = np.asarray(self.squared_errors)
        parts = [
            f"{name} {np.sqrt(errors[mask].mean()):.4f} ({int(mask.sum()):,})"
            for name, mask in segments.items()
            if mask.sum() >= MIN_SEGMENT_ROWS
        ]
        return "; ".join(parts) or "no segment with enough rows"


async def post_label(client: httpx.AsyncClient, outcome: Outcome, request_id: str, actual: float) -> None:
    """POST one label; retried on a 5xx, a 429 (after its Retry-After) or a transport error (the endpoint is
    idempotent), not on another 4xx."""
    problem = ""
    for attempt in range(5):
        try:
            response = await client.post("/feedback", json={"request_id": request_id, "actual": actual})
        except httpx.HTTPError as error:
            problem = f"feedback {error!r}"
        else:
            if response.status_code in (200, 201):
                outcome.labelled += 1
                return
            problem = f"feedback {response.status_code} {response.text[:200]}"
            if response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code < 500:
                break
        await asyncio.sleep(0.5 * (attempt + 1))
    outcome.label_failures += 1
    outcome.errors.append(problem)


async def drive(
    plan: TrafficPlan,
    features: pd.DataFrame,
    labels: pd.Series,
    label_headers: dict[str, str],
    predict_headers: dict[str, str] | None = None,
) -> Outcome:
    """Send every row to /predict (``plan.concurrency`` at a time, at ``plan.rate``, with ``predict_headers``:
    a client token) and, for a share of the answered ones, the true label to /feedback after
    ``plan.label_delay`` seconds."""
    outcome = Outcome()
    rng = random.Random(plan.seed)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(features)):
        queue.put_nowait(index)
    records = features.to_dict(orient="records")
    pending_labels: list[asyncio.Task[None]] = []
    interval = 1.0 / plan.rate if plan.rate > 0 else 0.0
    started = time.monotonic()
    progress = tqdm(
        total=len(records), desc=f"{plan.scenario}", unit="req", disable=plan.quiet or not sys.stderr.isatty()
    )

    # Predictions and labels use separate connection pools, and at most --concurrency labels are in
    # flight, so a burst of labels never starves the predictions of connections.
    labels_in_flight = asyncio.Semaphore(plan.concurrency)
    async with (
        httpx.AsyncClient(base_url=plan.url, timeout=30, headers=predict_headers) as client,
        httpx.AsyncClient(base_url=plan.url, timeout=30, headers=label_headers) as label_client,
    ):

        async def send_label(request_id: str, actual: float) -> None:
            await asyncio.sleep(plan.label_delay)
            async with labels_in_flight:
                await post_label(label_client, outcome, request_id, actual)

        async def worker() -> None:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if interval:
                    await asyncio.sleep(max(0.0, started + index * interval - time.monotonic()))
                outcome.sent += 1
                headers = {"X-Routing-Key": f"client-{index % plan.clients}"} if plan.clients else None
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
                    if rng.random() < plan.label_fraction:
                        pending_labels.append(asyncio.create_task(send_label(body["request_id"], actual)))
                progress.update()

        await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
        progress.close()
        if pending_labels:
            await asyncio.gather(*pending_labels)
    return outcome


def simulation_frame(settings: Settings) -> pd.DataFrame:
    """The dataset the rows come from: --source / HOUSING_DATA_SOURCE when given, else the copy load_data.py
    stored under the artifacts dir (so `make simulate` works offline after `make pipeline`), else
    scikit-learn's downloader."""
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
        print(
            f"challenger: version {challenger['version']} ({challenger['candidate']}) scored every request in"
            " shadow"
            + (
                f" and answered {challenger['canary_percent']:g} % of them (canary)"
                if challenger["canary_percent"]
                else ""
            )
            + "; once labels are back, `promote.py --from-shadow` (or the next monitor run) promotes or"
            " drops it"
        )
