"""The traffic simulator's scenarios on the real held-out split: each one sends real districts, shaped as
docs/monitoring.md says (housing.monitoring.traffic.scenario_rows, the function simulate_traffic.py sends its
rows from)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from housing.config.settings import PROJECT_DIR
from housing.data.dataset import split_dataset
from housing.monitoring.segments import region_of
from housing.monitoring.traffic import SCENARIOS, SUBPOPULATIONS, scenario_rows
from housing.schema import SPECS_BY_NAME


@pytest.fixture(scope="module")
def held_out(real_frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    _, x_test, _, y_test = split_dataset(real_frame, test_size=0.2, random_state=42)
    return x_test, y_test


def originals(x: pd.DataFrame, y: pd.Series, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The held-out rows the sent rows were drawn from, matched on the columns no scenario changes."""
    keys = ["Latitude", "Longitude", "HouseAge", "AveRooms", "Population"]
    table = x.assign(label=y).drop_duplicates(keys)
    merged = features.merge(table, on=keys, how="left", suffixes=("", "_original"), validate="many_to_one")
    assert merged["label"].notna().all(), "a sent row is not a held-out district"
    return merged[[f"{name}_original" for name in ("MedInc", "AveBedrms", "AveOccup")]], merged["label"]


def test_baseline_sends_held_out_districts_with_their_own_labels(held_out):
    x, y = held_out
    features, labels = scenario_rows(x, y, "baseline", count=2000, seed=3)
    original, label = originals(x, y, features)
    assert np.array_equal(features["MedInc"], original["MedInc_original"]) and np.allclose(labels, label)
    assert features.drop_duplicates().shape[0] > 1500  # 2,000 draws from 4,128 districts: varied, not one row
    again, _ = scenario_rows(x, y, "baseline", count=2000, seed=3)
    assert again.equals(features)  # the random seed decides which rows


def test_income_shift_scales_incomes_by_1_2_within_the_contract_and_keeps_the_labels(held_out):
    x, y = held_out
    features, labels = scenario_rows(x, y, "income-shift", count=2000, seed=4)
    original, label = originals(x, y, features)
    assert np.allclose(
        features["MedInc"], np.minimum(original["MedInc_original"] * 1.2, SPECS_BY_NAME["MedInc"].maximum)
    )
    assert SPECS_BY_NAME["MedInc"].in_range(features["MedInc"]).all()  # still a valid request
    assert np.allclose(labels, label)  # incomes move, prices do not: a change the inputs show only partly


def test_market_inflation_moves_the_labels_only(held_out):
    x, y = held_out
    features, labels = scenario_rows(x, y, "market-inflation", count=2000, seed=5, inflation=1.3)
    original, label = originals(x, y, features)
    assert np.array_equal(features["MedInc"], original["MedInc_original"])
    assert np.allclose(labels, label * 1.3)


@pytest.mark.parametrize("name", sorted(SUBPOPULATIONS))
def test_each_subpopulation_sends_only_its_districts(held_out, name):
    x, y = held_out
    features, labels = scenario_rows(x, y, "subpopulation", count=500, seed=6, subpopulation=name)
    _, label = originals(x, y, features)
    assert np.allclose(labels, label)
    rows = {
        "high-income": features["MedInc"] >= x["MedInc"].quantile(0.8),
        "bay-area": region_of(features) == "Bay Area",
        "inland-low-income": (region_of(features) == "Central Valley") & (features["MedInc"] < 3.0),
        "old-house": features["HouseAge"] >= 45,
    }[name]
    assert rows.all(), name
    assert SUBPOPULATIONS[name](x).sum() >= 200  # enough districts to draw a window from


def test_the_scenarios_are_the_documented_ones():
    """docs/monitoring.md's scenario table names every scenario the simulator sends, and nothing else."""
    page = (PROJECT_DIR / "docs" / "monitoring.md").read_text()
    documented = re.findall(r"^\| `([a-z-]+)` \|", page, flags=re.MULTILINE)
    assert tuple(documented) == SCENARIOS
