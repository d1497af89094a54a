"""The served prediction interval: a version's calibrated range (:mod:`housing.training.intervals`), its
quantile models' trees through the compiled kernel, kept calibrated online by the labels that come back.

**Compiled.** The two quantile models are copied into the tree kernel's format (:mod:`housing.serving.trees`)
when the version loads, and used only if they reproduce LightGBM's own predictions on probe rows exactly
(to 1e-9), as the model itself is; otherwise LightGBM's predict runs.

**Kept calibrated by the labels.** A market move shifts every price, and a range calibrated on last year's
errors then misses. Each label that comes back updates, in the prediction log's database, the served
version's :class:`OnlineScale` for its region and overall (:mod:`housing.store.interval_state`): a shift
(an exponential average of log(label / prediction)) moves the range's centre, and a width factor follows
adaptive conformal inference (Gibbs and Candès, 2021): every miss widens the range, every hit narrows it a
little, so that misses settle at ``1 - level``. Every worker reads the same state from the database every
few seconds, so they serve the same ranges; a new version starts from its own fresh calibration (no state).
A region's state is used once it has :data:`MIN_REGION_LABELS` labels, the overall one before.

**Within what a district can be worth.** The range is cut to the data's range at the version's price index
(prices were top-coded at $500,001), widened by the online shift (a move up raises the ceiling, a move down
lowers the floor; neither narrows it, since a top-coded district stays at its cap), and always holds its own
centre (a prediction
beyond the data's range keeps a range that reaches it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numba import njit

from housing.monitoring.segments import INCOME_BANDS, REGION_NAMES, REGIONS, region_codes
from housing.schema import OBSERVED_TARGET_RANGE
from housing.serving.compiled import probe_rows
from housing.serving.trees import flatten_lightgbm
from housing.training.intervals import IntervalCalibration, interval_inputs

logger = logging.getLogger(__name__)

ALL = "all"
"""The segment of the overall online state."""
MIN_REGION_LABELS = 50
"""Labels a region's online state needs before it is used instead of the overall one."""

Offsets = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SegmentScale:
    """One segment's online correction: the range's centre moves by ``exp(shift)``, its half-widths are
    multiplied by ``exp(width)``."""

    shift: float = 0.0
    width: float = 0.0
    labels: int = 0


WIDTH_STEP = 0.05
"""How far one label moves the log of the width factor (adaptive conformal inference's step)."""
SHIFT_STEP = 0.05
"""Weight of one label in the exponential average of log(label / prediction)."""


SHIFT_LIMIT = math.log(2.0)
"""The online centre moves at most x2 or /2: labels can follow a market move, never reprice without bound."""
WIDTH_LIMIT = math.log(4.0)
"""The online width factor stays within [1/4, 4] of the calibrated range: a run of labels (honest or not) can
neither collapse the range onto the prediction nor blow it up without bound."""


def clamp(value: float, limit: float) -> float:
    return min(max(value, -limit), limit)


def after_label(scale: SegmentScale, missed: bool, log_ratio: float, level: float) -> SegmentScale:
    """A segment's state after one more label (:mod:`housing.store.interval_state` applies the same step in
    SQL): a miss widens the range, a hit narrows it a little, so misses settle at ``1 - level``; the centre
    follows the labels' price level. Both stay within their limits."""
    return SegmentScale(
        clamp(scale.shift + SHIFT_STEP * (log_ratio - scale.shift), SHIFT_LIMIT),
        clamp(scale.width + WIDTH_STEP * (float(missed) - (1 - level)), WIDTH_LIMIT),
        scale.labels + 1,
    )


@dataclass(frozen=True)
class OnlineScale:
    """A version's online corrections: overall and per region (by name)."""

    overall: SegmentScale = field(default_factory=SegmentScale)
    regions: dict[str, SegmentScale] = field(default_factory=dict)

    def for_rows(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's (shift, width): its region's once that region has enough labels, else the overall."""
        shift = np.full(len(values), self.overall.shift)
        width = np.full(len(values), self.overall.width)
        if self.regions:
            codes = region_codes(values)
            for code, name in enumerate(REGION_NAMES):
                scale = self.regions.get(name)
                if scale is not None and scale.labels >= MIN_REGION_LABELS:
                    shift[codes == code], width[codes == code] = scale.shift, scale.width
        return shift, width

    @cached_property
    def by_region(self) -> tuple[np.ndarray, np.ndarray]:
        """(shift, width) per region code (:data:`REGION_NAMES` order), as :meth:`for_rows` picks them: what
        the compiled range kernel reads (computed once per state read from the database)."""
        shift = np.full(len(REGION_NAMES), self.overall.shift)
        width = np.full(len(REGION_NAMES), self.overall.width)
        for code, name in enumerate(REGION_NAMES):
            scale = self.regions.get(name)
            if scale is not None and scale.labels >= MIN_REGION_LABELS:
                shift[code], width[code] = scale.shift, scale.width
        return shift, width


@dataclass(frozen=True)
class SegmentTables:
    """The regions' boxes and the corrections per segment, as arrays for :func:`_ranges`."""

    boxes: np.ndarray
    """(k, 4) latitude from/to, longitude from/to of every region's boxes, in :data:`REGIONS` order."""
    box_codes: np.ndarray
    """Each box's region code (the first box a row falls in gives its region, as in ``region_codes``)."""
    region_corrections: np.ndarray
    income_edges: np.ndarray
    income_corrections: np.ndarray


def segment_tables(calibration: IntervalCalibration) -> SegmentTables:
    boxes = [(box, code) for code, (_, region_boxes) in enumerate(REGIONS) for box in region_boxes]
    return SegmentTables(
        np.array([box for box, _ in boxes], dtype=np.float64).reshape(-1, 4),
        np.array([code for _, code in boxes], dtype=np.int64),
        np.asarray(calibration.region_corrections, dtype=np.float64),
        np.array([low for _, low, _ in INCOME_BANDS[1:]], dtype=np.float64),
        np.asarray(calibration.income_corrections, dtype=np.float64),
    )


@njit(nogil=True, cache=True)
def _ranges(
    values: np.ndarray,
    predictions: np.ndarray,
    low_raw: np.ndarray,
    high_raw: np.ndarray,
    boxes: np.ndarray,
    box_codes: np.ndarray,
    region_corrections: np.ndarray,
    income_edges: np.ndarray,
    income_corrections: np.ndarray,
    shifts: np.ndarray,
    widths: np.ndarray,
    low_cap: float,
    high_cap: float,
    low: np.ndarray,
    high: np.ndarray,
) -> None:
    """Each row's range in one pass (what ``ServedInterval.bounds`` documents): its region and income band,
    the larger of their corrections around the quantile models' raw offsets, the online shift and width of
    its region, cut to the data's range widened by the shift, holding its centre."""
    rest = len(region_corrections) - 1
    for i in range(values.shape[0]):
        latitude, longitude, income = values[i, 6], values[i, 7], values[i, 0]
        region = rest
        for b in range(boxes.shape[0]):
            if boxes[b, 0] <= latitude <= boxes[b, 1] and boxes[b, 2] <= longitude <= boxes[b, 3]:
                region = box_codes[b]
                break
        band = len(income_edges) if np.isnan(income) else 0
        for edge in income_edges:
            if income >= edge:
                band += 1
        correction = max(region_corrections[region], income_corrections[band])
        moved, stretch = np.exp(shifts[region]), np.exp(widths[region])
        centre = predictions[i] * moved
        floor = low_cap * min(moved, 1.0)
        ceiling = high_cap * max(moved, 1.0)
        below = centre - (correction - low_raw[i]) * stretch
        above = centre + (high_raw[i] + correction) * stretch
        low[i] = min(max(below, floor), ceiling, centre)
        high[i] = max(min(max(above, floor), ceiling), centre)


@dataclass
class ServedInterval:
    """What the API computes a version's ranges with."""

    calibration: IntervalCalibration
    low_offset: Offsets
    high_offset: Offsets
    compiled: bool
    price_index: float = 1.0
    online: OnlineScale = field(default_factory=OnlineScale)
    """The latest online corrections read from the database (a fresh version: none)."""

    @property
    def level(self) -> float:
        return self.calibration.level

    @cached_property
    def tables(self) -> SegmentTables:
        return segment_tables(self.calibration)

    def bounds(self, values: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each prediction's range (low, high), for raw (n, 8) features and the (n,) predictions: the
        quantile models' offsets widened by the larger of the row's region and income corrections, moved and
        stretched by its region's online state, cut to the data's range at the price index (widened by the
        move) and holding its centre (:func:`_ranges`)."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        predictions = np.ascontiguousarray(predictions, dtype=np.float64)
        inputs = interval_inputs(values, predictions)
        low_raw, high_raw = self.low_offset(inputs), self.high_offset(inputs)
        tables = self.tables
        shifts, widths = self.online.by_region
        floor, ceiling = OBSERVED_TARGET_RANGE
        low, high = np.empty(len(values)), np.empty(len(values))
        _ranges(
            values,
            predictions,
            np.ascontiguousarray(low_raw, dtype=np.float64),
            np.ascontiguousarray(high_raw, dtype=np.float64),
            tables.boxes,
            tables.box_codes,
            tables.region_corrections,
            tables.income_edges,
            tables.income_corrections,
            shifts,
            widths,
            floor * self.price_index,
            ceiling * self.price_index,
            low,
            high,
        )
        return low, high


def serve_interval(calibration: IntervalCalibration, price_index: float) -> ServedInterval:
    """The version's interval with its quantile models compiled when that reproduces LightGBM exactly."""

    def library(model: object) -> Offsets:
        return lambda rows: np.asarray(model.predict(rows), dtype=np.float64)  # type: ignore[attr-defined]

    library_low, library_high = library(calibration.low_model), library(calibration.high_model)
    probe = probe_rows(512).to_numpy(dtype=np.float64)
    inputs = interval_inputs(
        probe, np.linspace(OBSERVED_TARGET_RANGE[0], OBSERVED_TARGET_RANGE[1], len(probe))
    )
    try:
        low = flatten_lightgbm(calibration.low_model.booster_).predict
        high = flatten_lightgbm(calibration.high_model.booster_).predict
        same = all(
            np.allclose(compiled(rows), library(rows), rtol=0, atol=1e-9)
            for compiled, library in ((low, library_low), (high, library_high))
            for rows in (inputs, inputs[:1])
        )
    except ValueError as error:
        logger.info("the interval's quantile models have no compiled form: %s", error)
        same = False
    if not same:
        logger.warning(
            "the interval's compiled path differs from LightGBM's predict; serving with its predict"
        )
        return ServedInterval(calibration, library_low, library_high, False, price_index)
    return ServedInterval(calibration, low, high, True, price_index)
