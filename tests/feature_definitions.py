"""The feature steps' columns restated from their documented meaning, in plain Python and numpy.

Written from housing/training/features.py's docstrings and names and the docs: loops over rows and
neighbours, no call to a production helper (no kernel, no KD-tree, no ``_positions_km``, no
``kfold_indices``), constants written out. The served path and ``transform`` run the same numba kernels, so
comparing those two says nothing about what the kernels compute; these definitions do, column by column, in
tests/code/test_feature_definitions.py (synthetic districts) and tests/model/test_compiled_paths.py (the
production model's fitted steps on real districts).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

RAW_COLUMNS = (
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
)
"""The contract's 8 input columns, in the order every step receives them."""


CLIPPED_COLUMNS = ("AveRooms", "AveBedrms", "Population", "AveOccup")
"""The heavy-tailed columns the outlier rule clips (docs/stages.md); the others pass through."""


KM_PER_DEGREE_LATITUDE = 111.0


KM_PER_DEGREE_LONGITUDE = 91.0  # at California's mean latitude


CITIES = {
    "los_angeles": (34.05, -118.24),
    "san_francisco": (37.77, -122.42),
    "san_diego": (32.72, -117.16),
    "san_jose": (37.34, -121.89),
    "sacramento": (38.58, -121.49),
}


IDW_OFFSET_KM = 0.5
"""Added to each neighbour's distance in the inverse-distance weights (districts can share a location)."""


Columns = dict[str, np.ndarray]


def column(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, RAW_COLUMNS.index(name)]


def quantile_by_definition(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation between the two closest order statistics."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def clipped_by_definition(train: np.ndarray, rows: np.ndarray, quantiles: tuple[float, float]) -> Columns:
    """The outlier rule: a clipped column is held to its training quantiles, every other column is
    unchanged."""
    expected = {}
    for name in RAW_COLUMNS:
        values = column(rows, name)
        if name in CLIPPED_COLUMNS:
            low, high = (quantile_by_definition(list(column(train, name)), q) for q in quantiles)
            values = np.array([min(max(value, low), high) for value in values])
        expected[name] = values.copy()
    return expected


def spatial_by_definition(rows: np.ndarray, angles: Sequence[float]) -> Columns:
    """The raw columns, then per angle the coordinates rotated by it (x from longitude, y from latitude),
    the planar distance in km to each big city, and four household ratios."""
    expected = {name: column(rows, name).copy() for name in RAW_COLUMNS}
    derived: dict[str, list[float]] = {}
    for row in rows:
        district = dict(zip(RAW_COLUMNS, (float(value) for value in row), strict=True))
        lat, lon = district["Latitude"], district["Longitude"]
        for angle in angles:
            cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            derived.setdefault(f"rot{angle}_x", []).append(lon * cos + lat * sin)
            derived.setdefault(f"rot{angle}_y", []).append(lat * cos - lon * sin)
        for city, (city_lat, city_lon) in CITIES.items():
            north_km, east_km = (
                (lat - city_lat) * KM_PER_DEGREE_LATITUDE,
                (lon - city_lon) * KM_PER_DEGREE_LONGITUDE,
            )
            derived.setdefault(f"km_to_{city}", []).append(math.sqrt(north_km**2 + east_km**2))
        derived.setdefault("rooms_per_person", []).append(district["AveRooms"] / district["AveOccup"])
        derived.setdefault("bedroom_share", []).append(district["AveBedrms"] / district["AveRooms"])
        derived.setdefault("households", []).append(district["Population"] / district["AveOccup"])
        derived.setdefault("income_x_occupancy", []).append(district["MedInc"] * district["AveOccup"])
    return expected | {name: np.array(values) for name, values in derived.items()}


def nearest_choices(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The k nearest training districts as (those certainly among them: closer than the k-th; those tied with
    the k-th, of which any ``m`` complete the k; m)."""
    kth = np.partition(distances, k - 1)[k - 1]
    closer, tied = np.flatnonzero(distances < kth), np.flatnonzero(distances == kth)
    return closer, tied, k - len(closer)


def spread_range(closer: Sequence[float], tied: Sequence[float], m: int) -> tuple[float, float]:
    """Lowest and highest population standard deviation of ``closer`` plus any m of ``tied``: every choice
    when there are at most 5,000, else the loose but valid bounds 0 and half the range."""
    if math.comb(len(tied), m) > 5_000:
        candidates = [*closer, *tied]
        return 0.0, (max(candidates) - min(candidates)) / 2
    spreads = []
    for chosen in itertools.combinations(tied, m):
        values = [*closer, *chosen]
        mean = sum(values) / len(values)
        spreads.append(math.sqrt(sum((value - mean) ** 2 for value in values) / len(values)))
    return min(spreads), max(spreads)


def neighbours_by_definition(
    train: np.ndarray, targets: np.ndarray, rows: np.ndarray, ks: Sequence[int], spread_k: int
) -> tuple[Columns, Columns]:
    """Per row, from the training districts by planar distance (km): for each k the mean target of the k
    nearest, the distance to the k-th, and the row's income over the k nearest's mean income; for
    ``spread_k`` the population standard deviation of the nearest targets and their mean weighted by
    1 / (distance + 0.5 km).

    Training districts tied with the k-th nearest (the same distance, e.g. a shared location) may complete
    the k nearest in any combination, so a column is defined up to that choice: the two mappings returned
    are its lowest and its highest value over every choice, one and the same value where nothing ties.
    """
    train_north, train_east = (
        column(train, "Latitude") * KM_PER_DEGREE_LATITUDE,
        column(train, "Longitude") * KM_PER_DEGREE_LONGITUDE,
    )
    train_incomes = column(train, "MedInc")
    lowest: dict[str, list[float]] = {}
    highest: dict[str, list[float]] = {}

    def define(name: str, low: float, high: float) -> None:
        lowest.setdefault(name, []).append(low)
        highest.setdefault(name, []).append(high)

    for row in rows:
        district = dict(zip(RAW_COLUMNS, (float(value) for value in row[: len(RAW_COLUMNS)]), strict=True))
        north, east = (
            district["Latitude"] * KM_PER_DEGREE_LATITUDE,
            district["Longitude"] * KM_PER_DEGREE_LONGITUDE,
        )
        distances = np.sqrt((train_north - north) ** 2 + (train_east - east) ** 2)
        for k in ks:
            closer, tied, m = nearest_choices(distances, k)
            fewest_targets, most_targets = (
                sorted(float(targets[i]) for i in tied)[:m],
                sorted(float(targets[i]) for i in tied)[-m:],
            )
            target_sum = sum(float(targets[i]) for i in closer)
            define(
                f"neighbor{k}_target_mean",
                (target_sum + sum(fewest_targets)) / k,
                (target_sum + sum(most_targets)) / k,
            )
            define(f"neighbor{k}_km", float(distances[tied[0]]), float(distances[tied[0]]))
            tied_incomes = sorted(float(train_incomes[i]) for i in tied)
            income_sum = sum(float(train_incomes[i]) for i in closer)
            poorest, richest = (
                (income_sum + sum(tied_incomes[:m])) / k,
                (income_sum + sum(tied_incomes[-m:])) / k,
            )
            define(f"income_vs_neighbor{k}", district["MedInc"] / richest, district["MedInc"] / poorest)
        closer, tied, m = nearest_choices(distances, spread_k)
        closer_targets, tied_targets = (
            [float(targets[i]) for i in closer],
            sorted(float(targets[i]) for i in tied),
        )
        define(f"neighbor{spread_k}_target_std", *spread_range(closer_targets, tied_targets, m))
        closer_weights = [1.0 / (float(distances[i]) + IDW_OFFSET_KM) for i in closer]
        tied_weight = 1.0 / (float(distances[tied[0]]) + IDW_OFFSET_KM)  # the same for every tied district
        weighted = sum(w * t for w, t in zip(closer_weights, closer_targets, strict=True))
        weights = sum(closer_weights) + m * tied_weight
        define(
            f"neighbor{spread_k}_target_idw_mean",
            (weighted + tied_weight * sum(tied_targets[:m])) / weights,
            (weighted + tied_weight * sum(tied_targets[-m:])) / weights,
        )
    return {name: np.array(values) for name, values in lowest.items()}, {
        name: np.array(values) for name, values in highest.items()
    }


def assert_every_column_is_its_definition(
    out: np.ndarray,
    output_names: Sequence[str] | np.ndarray,
    expected: Mapping[str, np.ndarray],
    highest: Mapping[str, np.ndarray] | None = None,
    rtol: float = 1e-12,
) -> None:
    """Each output column, by name, equals its definition (lies between ``expected`` and ``highest`` where
    a definition leaves a choice); no column is left without a definition and no definition without a column.
    """
    names = [str(name) for name in output_names]
    highest = expected if highest is None else highest
    assert out.shape[1] == len(names)
    assert sorted(names) == sorted(expected), (
        f"columns without definition: {set(names) - set(expected)}; missing: {set(expected) - set(names)}"
    )
    for index, name in enumerate(names):
        low, high, got = expected[name], highest[name], out[:, index]
        slack = 1e-9 + rtol * np.maximum(np.abs(low), np.abs(high))
        off = np.flatnonzero(~((got >= low - slack) & (got <= high + slack)))  # NaN is off too
        first = off[0] if off.size else 0
        assert off.size == 0, (
            f"column {name}: {off.size} rows off, e.g. row {first}: {got[first]!r}, defined"
            f" {low[first]!r}..{high[first]!r}"
        )


def exactly_defined(lowest: Columns, highest: Columns) -> np.ndarray:
    """Rows whose every column has a single value (no tie leaves a choice)."""
    return np.all([lowest[name] == highest[name] for name in lowest], axis=0)


def synthetic_districts(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Plausible districts (the contract's column order) and targets, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    values = np.column_stack(
        [
            rng.uniform(0.5, 15, rows),
            rng.uniform(1, 52, rows),
            rng.uniform(2, 10, rows),
            rng.uniform(0.8, 2, rows),
            rng.uniform(50, 5000, rows),
            rng.uniform(1.2, 6, rows),
            rng.uniform(32.6, 41.9, rows),
            rng.uniform(-124.3, -114.4, rows),
        ]
    )
    return values, rng.uniform(0.15, 5, rows)


ENCODER_SETTINGS = [
    pytest.param((5, 20, 60), 20, 5, 42, id="served-settings"),
    pytest.param((3, 7), 10, 3, 0, id="other-settings"),
]


def neighbour_input(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Districts with two extra columns after the raw 8, as the encoder gets them in the pipeline (after the
    spatial features): it reads income and location from the raw columns and passes every column through."""
    values, targets = synthetic_districts(rows, seed)
    extra = np.random.default_rng(seed + 1).normal(size=(rows, 2))
    return np.column_stack([values, extra]), targets


def passthrough_by_definition(rows: np.ndarray) -> Columns:
    return {name: rows[:, index].copy() for index, name in enumerate([*RAW_COLUMNS, "x8", "x9"])}
