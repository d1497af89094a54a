"""The feature contract, defined once: the 8 input columns and the target, their units and valid ranges.

load_data validates the dataset with it, the API builds its request schema from it, the monitor and the
tests read the column lists from it. Ranges are "plausible for a California census block group", wider
than what the 1990 data shows, so that real drift is still accepted while impossible values are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from housing.errors import UserError


@dataclass(frozen=True)
class ColumnSpec:
    """One column of the contract: name, meaning, unit and the closed/open interval it must lie in."""

    name: str
    description: str
    unit: str
    minimum: float
    maximum: float
    exclusive_minimum: bool = False
    example: float = 0.0
    clip_outliers: bool = False
    """Heavy-tailed ratio/count columns whose extreme values the outlier rule clips (see features.py)."""

    def rule(self) -> str:
        """The valid range as a short human sentence fragment, e.g. ``> 0 and <= 50``."""
        low = f"> {self.minimum:g}" if self.exclusive_minimum else f">= {self.minimum:g}"
        return f"{low} and <= {self.maximum:g}"

    def in_range(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """Boolean mask of the values that satisfy the range."""
        values = np.asarray(values, dtype=float)
        low_ok = values > self.minimum if self.exclusive_minimum else values >= self.minimum
        return low_ok & (values <= self.maximum)


FEATURES: tuple[ColumnSpec, ...] = (
    ColumnSpec(
        "MedInc",
        "Median income of households in the block group",
        "tens of thousands of US dollars",
        0.0,
        25.0,
        exclusive_minimum=True,
        example=3.5,
    ),
    ColumnSpec("HouseAge", "Median age of the houses in the block group", "years", 0.0, 100.0, example=28.0),
    ColumnSpec(
        "AveRooms",
        "Average number of rooms per household",
        "rooms per household",
        0.0,
        200.0,
        exclusive_minimum=True,
        example=5.0,
        clip_outliers=True,
    ),
    ColumnSpec(
        "AveBedrms",
        "Average number of bedrooms per household",
        "bedrooms per household",
        0.0,
        50.0,
        exclusive_minimum=True,
        example=1.04,
        clip_outliers=True,
    ),
    ColumnSpec(
        "Population",
        "Number of people living in the block group",
        "people",
        0.0,
        100_000.0,
        exclusive_minimum=True,
        example=1500.0,
        clip_outliers=True,
    ),
    ColumnSpec(
        "AveOccup",
        "Average number of household members",
        "people per household",
        0.0,
        1_500.0,
        exclusive_minimum=True,
        example=3.0,
        clip_outliers=True,
    ),
    ColumnSpec(
        "Latitude",
        "Latitude of the block group's centre (California: 32.5 to 42)",
        "degrees north",
        32.4,
        42.1,
        example=34.2,
    ),
    ColumnSpec(
        "Longitude",
        "Longitude of the block group's centre (California: -124.5 to -114.1)",
        "degrees east",
        -124.5,
        -114.0,
        example=-118.3,
    ),
)

TARGET = ColumnSpec(
    "MedHouseVal",
    "Median house value in the block group",
    "hundreds of thousands of US dollars",
    0.0,
    100.0,
    exclusive_minimum=True,
    example=2.0,
)

OBSERVED_TARGET_RANGE = (0.14999, 5.00001)
"""The lowest and highest MedHouseVal the data holds (the census top-coded values at $500,001)."""


def plausible_label_range(price_index: float, tolerance: float) -> tuple[float, float]:
    """The labels a district can plausibly have at ``price_index`` (the served version's price level): the
    data's observed range at that level, widened ``tolerance`` times each way."""
    low, high = OBSERVED_TARGET_RANGE
    return low * price_index / tolerance, high * price_index * tolerance


FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURES)
COLUMN_NAMES: tuple[str, ...] = (*FEATURE_NAMES, TARGET.name)
SPECS_BY_NAME: dict[str, ColumnSpec] = {spec.name: spec for spec in (*FEATURES, TARGET)}
TARGET_UNIT_DOLLARS = 100_000
"""One unit of ``MedHouseVal`` in US dollars."""

EXAMPLE_REQUEST: dict[str, float] = {spec.name: spec.example for spec in FEATURES}
"""The original report's example request, used by the API docs, the docs and the tests."""


class ContractError(UserError):
    """The data breaks the feature contract; the message is one sentence naming the problem."""


def validate_frame(frame: pd.DataFrame, *, require_target: bool = True) -> pd.DataFrame:
    """Check a frame against the contract and return it with the contract's column order and float dtype.

    Raises :class:`ContractError` with one sentence for: no rows, missing or unexpected columns,
    non-numeric values, missing values, infinities, values outside a column's range.
    """
    expected = COLUMN_NAMES if require_target else FEATURE_NAMES
    if frame.shape[0] == 0:
        raise ContractError("the data has no rows")
    missing = [name for name in expected if name not in frame.columns]
    unexpected = [str(name) for name in frame.columns if name not in expected]
    if missing:
        hint = f" (found unexpected {', '.join(unexpected)})" if unexpected else ""
        raise ContractError(f"the data is missing column(s) {', '.join(missing)}{hint}")
    if unexpected:
        raise ContractError(f"the data has unexpected column(s) {', '.join(unexpected)}")
    frame = frame.loc[:, list(expected)]
    for name in expected:
        column = frame[name]
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            numeric = pd.to_numeric(column, errors="coerce")
            bad = column[numeric.isna() & column.notna()]
            if len(bad):
                raise ContractError(
                    f"column {name} has {len(bad)} non-numeric value(s), e.g. {bad.iloc[0]!r} in row"
                    f" {bad.index[0]}"
                )
            frame = frame.assign(**{name: numeric})
    values = frame.astype("float64")
    for name in expected:
        column = values[name]
        n_missing = int(column.isna().sum())
        if n_missing:
            raise ContractError(
                f"column {name} has {n_missing} missing value(s), e.g. in row"
                f" {column[column.isna()].index[0]}"
            )
        n_infinite = int(np.isinf(column.to_numpy()).sum())
        if n_infinite:
            raise ContractError(f"column {name} has {n_infinite} infinite value(s)")
        spec = SPECS_BY_NAME[name]
        outside = ~spec.in_range(column.to_numpy())
        if outside.any():
            first = column[outside]
            raise ContractError(
                f"column {name} has {int(outside.sum())} value(s) outside the valid range ({spec.rule()}"
                f" {spec.unit}), e.g. {first.iloc[0]:g} in row {first.index[0]}"
            )
    return values
