"""Every column the feature steps output, checked one by one against its definition
(tests/feature_definitions.py) on synthetic districts: a column without a definition, or a definition without
its column, fails too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from housing.schema import FEATURE_NAMES
from housing.training.features import NeighborTargetEncoder, OutlierClipper, SpatialFeatures
from tests.feature_definitions import (
    CITIES,
    CLIPPED_COLUMNS,
    ENCODER_SETTINGS,
    RAW_COLUMNS,
    assert_every_column_is_its_definition,
    clipped_by_definition,
    column,
    exactly_defined,
    neighbour_input,
    neighbours_by_definition,
    passthrough_by_definition,
    spatial_by_definition,
    synthetic_districts,
)


def test_the_raw_column_order_is_the_contracts():
    assert tuple(FEATURE_NAMES) == RAW_COLUMNS


@pytest.mark.parametrize("quantiles", [(0.05, 0.95), (0.001, 0.999)])
def test_outlier_clipper_columns_are_their_definition(quantiles):
    train, _ = synthetic_districts(200, seed=10)
    train[:3, RAW_COLUMNS.index("AveOccup")] = [
        500.0,
        900.0,
        0.2,
    ]  # a few extreme districts in the training rows
    train[3:5, RAW_COLUMNS.index("Population")] = [30_000.0, 3.0]
    rows, _ = synthetic_districts(60, seed=11)
    for name, extremes in {
        "AveRooms": [150.0, 0.5],
        "AveBedrms": [40.0, 0.1],
        "Population": [90_000.0, 1.0],
        "AveOccup": [1_200.0, 0.1],
    }.items():
        rows[:2, RAW_COLUMNS.index(name)] = extremes  # served rows beyond both bounds
    clipper = OutlierClipper(quantiles=quantiles).fit(
        pd.DataFrame(train, columns=list(RAW_COLUMNS))
    )  # it needs names
    out = clipper.transform_array(rows)
    expected = clipped_by_definition(train, rows, quantiles)
    assert_every_column_is_its_definition(out, clipper.get_feature_names_out(), expected)
    for name in CLIPPED_COLUMNS:  # the rule really bites on both sides, so an unclipped column would fail
        changed = expected[name] - column(rows, name)
        assert (changed < 0).any() and (changed > 0).any(), name
    for name in set(RAW_COLUMNS) - set(CLIPPED_COLUMNS):
        assert np.array_equal(out[:, RAW_COLUMNS.index(name)], column(rows, name)), name  # bit for bit


@pytest.mark.parametrize("angles", [(15, 30, 45, 60, 75), (0, 90, 137.5)])
def test_spatial_feature_columns_are_their_definition(angles):
    rows, _ = synthetic_districts(80, seed=20)
    rows[0, RAW_COLUMNS.index("Latitude")], rows[0, RAW_COLUMNS.index("Longitude")] = CITIES[
        "san_diego"
    ]  # 0 km from a city
    spatial = SpatialFeatures(angles=angles).fit(rows)
    names = spatial.get_feature_names_out()
    assert len(names) == len(RAW_COLUMNS) + 2 * len(angles) + len(CITIES) + 4
    assert_every_column_is_its_definition(
        spatial.transform_array(rows), names, spatial_by_definition(rows, angles)
    )
    assert_every_column_is_its_definition(spatial.transform(rows), names, spatial_by_definition(rows, angles))


@pytest.mark.parametrize(("ks", "spread_k", "folds", "random_state"), ENCODER_SETTINGS)
def test_neighbour_columns_of_new_rows_are_their_definition(ks, spread_k, folds, random_state):
    train, targets = neighbour_input(300, seed=30)
    rows, _ = neighbour_input(40, seed=31)
    lat, lon = RAW_COLUMNS.index("Latitude"), RAW_COLUMNS.index("Longitude")
    rows[:5, [lat, lon]] = train[:5, [lat, lon]]  # served districts at a training district's location (0 km)
    encoder = NeighborTargetEncoder(ks=ks, spread_k=spread_k, folds=folds, random_state=random_state).fit(
        train, targets
    )
    expected, highest = neighbours_by_definition(train, targets, rows, ks, spread_k)
    assert exactly_defined(
        expected, highest
    ).all()  # continuous synthetic locations: no ties, one value per column
    names = encoder.get_feature_names_out()
    assert len(names) == train.shape[1] + 3 * len(ks) + 2
    assert_every_column_is_its_definition(
        encoder.transform_array(rows), names, passthrough_by_definition(rows) | expected, rtol=1e-10
    )


@pytest.mark.parametrize(("ks", "spread_k", "folds", "random_state"), ENCODER_SETTINGS)
def test_neighbour_columns_of_training_rows_are_their_definition_out_of_fold(
    ks, spread_k, folds, random_state
):
    """Training rows (``fit_transform``): each row's neighbours are the training rows of the other folds of
    a shuffled, seeded K-fold split, never its own fold, so never itself."""
    train, targets = neighbour_input(300, seed=40)
    encoder = NeighborTargetEncoder(ks=ks, spread_k=spread_k, folds=folds, random_state=random_state)
    out = encoder.fit_transform(train, targets)
    expected = {name: np.empty(len(train)) for name in encoder.get_feature_names_out()}
    held_out_once = np.zeros(len(train), dtype=int)
    for others, held in KFold(n_splits=folds, shuffle=True, random_state=random_state).split(train):
        fold_expected, fold_highest = neighbours_by_definition(
            train[others], targets[others], train[held], ks, spread_k
        )
        assert exactly_defined(fold_expected, fold_highest).all()
        for name, values in (passthrough_by_definition(train[held]) | fold_expected).items():
            expected[name][held] = values
        held_out_once[held] += 1
    assert (held_out_once == 1).all()
    assert_every_column_is_its_definition(out, encoder.get_feature_names_out(), expected, rtol=1e-10)


def test_neighbour_columns_of_districts_sharing_locations_are_within_their_definition():
    """Real districts share locations (and distances): tied neighbours may complete the k nearest in any
    combination, so every column must lie between its lowest and highest defined value, the distances exactly.
    """
    train, targets = neighbour_input(300, seed=50)
    rows, _ = neighbour_input(40, seed=51)
    location = [RAW_COLUMNS.index("Latitude"), RAW_COLUMNS.index("Longitude")]
    for frame in (train, rows):  # a 1-degree grid: a few districts per location, many equal distances
        frame[:, location] = np.round(frame[:, location])
    encoder = NeighborTargetEncoder().fit(train, targets)
    lowest, highest = neighbours_by_definition(train, targets, rows, encoder.ks, encoder.spread_k)
    assert (~exactly_defined(lowest, highest)).sum() > 20  # the data really ties
    for k in encoder.ks:
        assert np.array_equal(lowest[f"neighbor{k}_km"], highest[f"neighbor{k}_km"])
    out = encoder.transform_array(rows)
    names = encoder.get_feature_names_out()
    assert_every_column_is_its_definition(
        out,
        names,
        passthrough_by_definition(rows) | lowest,
        passthrough_by_definition(rows) | highest,
        rtol=1e-10,
    )
