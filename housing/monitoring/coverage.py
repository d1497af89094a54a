"""The prediction interval's coverage on labelled traffic: how often the served range held the true value,
overall and per segment, with a binomial (Wilson) interval, and its mean width.

Every logged prediction carries the range it was served with (``interval_low``, ``interval_high``), so a
label says at once whether that range held it. Coverage below the level beyond noise (the Wilson interval's
upper end below it) is a reason of the retrain policy: the ranges no longer mean what they say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from housing.monitoring.segments import MIN_SEGMENT_ROWS, segment_masks
from housing.schema import TARGET

CONFIDENCE = 0.95
"""Confidence of the binomial interval around an empirical coverage."""


def wilson(hits: int, rows: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion ``hits / rows``."""
    if rows == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share = hits / rows
    centre = (share + z * z / (2 * rows)) / (1 + z * z / rows)
    half = z * math.sqrt(share * (1 - share) / rows + z * z / (4 * rows * rows)) / (1 + z * z / rows)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Coverage:
    """One group of labelled predictions: their ranges' empirical coverage, its interval, their mean width."""

    rows: int
    coverage: float
    low: float
    high: float
    mean_width: float

    def below(self, level: float) -> bool:
        """Coverage below ``level`` beyond noise."""
        return self.high < level


@dataclass(frozen=True)
class CoverageFigures:
    """The window's interval coverage: overall and per segment (segments with enough labelled rows)."""

    level: float
    overall: Coverage | None
    by_segment: dict[str, Coverage] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """For the decision file."""

        def one(found: Coverage) -> dict[str, float]:
            return {
                "rows": found.rows,
                "coverage": found.coverage,
                "low": found.low,
                "high": found.high,
                "mean_width": found.mean_width,
            }

        return {
            "interval_level": self.level,
            "interval_coverage": one(self.overall) if self.overall else None,
            "interval_coverage_by_segment": {name: one(found) for name, found in self.by_segment.items()},
        }


def _coverage(inside: np.ndarray, widths: np.ndarray) -> Coverage:
    hits = int(inside.sum())
    low, high = wilson(hits, len(inside))
    return Coverage(len(inside), hits / len(inside), low, high, float(np.mean(widths)))


def window_coverage(window: pd.DataFrame, level: float) -> CoverageFigures:
    """The coverage of the window's labelled predictions that were served with a range (pure)."""
    if "interval_low" not in window:
        return CoverageFigures(level, None)
    labelled = window[
        window[TARGET.name].notna() & window["interval_low"].notna() & window["interval_high"].notna()
    ]
    if labelled.empty:
        return CoverageFigures(level, None)
    actual = labelled[TARGET.name].to_numpy(dtype=np.float64)
    low = labelled["interval_low"].to_numpy(dtype=np.float64)
    high = labelled["interval_high"].to_numpy(dtype=np.float64)
    inside, widths = (actual >= low) & (actual <= high), high - low
    segments = {
        name: _coverage(inside[mask], widths[mask])
        for name, mask in segment_masks(labelled).items()
        if mask.sum() >= MIN_SEGMENT_ROWS
    }
    return CoverageFigures(level, _coverage(inside, widths), segments)
