"""The segments every per-segment figure is reported on: five regions from latitude and longitude (approximate
boxes) and three income bands."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    pass


MIN_SEGMENT_ROWS = 30
"""Segments with fewer rows in a window get no estimate (their interval would say nothing)."""


REGIONS: tuple[tuple[str, tuple[tuple[float, float, float, float], ...]], ...] = (
    ("Bay Area", ((37.1, 38.4, -123.1, -121.5),)),
    ("Los Angeles", ((33.6, 34.5, -118.9, -117.6),)),
    ("San Diego", ((32.5, 33.5, -117.6, -116.8),)),
    ("Central Valley", ((37.5, 40.7, -122.5, -120.8), (35.0, 37.5, -121.2, -118.7))),
)
"""Approximate boxes (latitude from, to; longitude from, to), first match wins; anything else is "rest of
California"."""


REST = "rest of California"


INCOME_BANDS: tuple[tuple[str, float, float], ...] = (
    ("income < $30k", -math.inf, 3.0),
    ("income $30k-60k", 3.0, 6.0),
    ("income >= $60k", 6.0, math.inf),
)
"""Median-income bands (MedInc is in $10,000s)."""


def region_of(features: pd.DataFrame) -> np.ndarray:
    """Each row's region name (see :data:`REGIONS`)."""
    lat = features["Latitude"].to_numpy(dtype=np.float64)
    lon = features["Longitude"].to_numpy(dtype=np.float64)
    names = np.full(len(features), REST, dtype=object)
    assigned = np.zeros(len(features), dtype=bool)
    for name, boxes in REGIONS:
        inside = np.zeros(len(features), dtype=bool)
        for lat_from, lat_to, lon_from, lon_to in boxes:
            inside |= (lat >= lat_from) & (lat <= lat_to) & (lon >= lon_from) & (lon <= lon_to)
        names[inside & ~assigned] = name
        assigned |= inside
    return names


def segment_masks(features: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every segment's rows: ``region: <name>`` for the five regions, ``<income band>`` for the three
    bands."""
    regions = region_of(features)
    masks = {f"region: {name}": regions == name for name in (*(name for name, _ in REGIONS), REST)}
    income = features["MedInc"].to_numpy(dtype=np.float64)
    masks.update({name: (income >= low) & (income < high) for name, low, high in INCOME_BANDS})
    return masks


REGION_NAMES: tuple[str, ...] = (*(name for name, _ in REGIONS), REST)
"""The regions in code order: :func:`region_codes` gives each row its index here."""


def region_codes(values: np.ndarray) -> np.ndarray:
    """Each row's region as an index into :data:`REGION_NAMES`, from an (n, 8) array in contract order
    (the serving path's form of :func:`region_of`)."""
    lat, lon = values[:, 6], values[:, 7]
    codes = np.full(len(values), len(REGION_NAMES) - 1, dtype=np.int64)
    for code in range(len(REGIONS) - 1, -1, -1):  # first match wins: assign the later regions first
        inside = np.zeros(len(values), dtype=bool)
        for lat_from, lat_to, lon_from, lon_to in REGIONS[code][1]:
            inside |= (lat >= lat_from) & (lat <= lat_to) & (lon >= lon_from) & (lon <= lon_to)
        codes[inside] = code
    return codes


def income_codes(values: np.ndarray) -> np.ndarray:
    """Each row's income band as an index into :data:`INCOME_BANDS`, from an (n, 8) array in contract
    order."""
    return np.searchsorted(np.array([3.0, 6.0]), values[:, 0], side="right").astype(np.int64)
