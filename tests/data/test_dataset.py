"""Expectations on the real California housing dataset."""

import pandas as pd

from housing.data.dataset import split_dataset
from housing.schema import COLUMN_NAMES, FEATURES, TARGET, validate_frame
from housing.training.features import build_preprocessor


def test_real_data_matches_the_contract(real_frame):
    checked = validate_frame(real_frame)
    assert tuple(checked.columns) == COLUMN_NAMES
    assert len(checked) == 20_640
    assert not checked.isna().any().any()


def test_real_data_ranges(real_frame):
    assert real_frame["MedInc"].between(0.4999, 15.0001).all()
    assert real_frame["HouseAge"].between(1, 52).all()
    assert real_frame["Latitude"].between(32.54, 41.95).all()
    assert real_frame["Longitude"].between(-124.35, -114.31).all()
    assert real_frame[TARGET.name].between(0.14999, 5.00001).all()
    for spec in FEATURES:
        assert spec.in_range(real_frame[spec.name]).all(), spec.name


def test_split_sizes_of_the_default_split_seed(real_frame):
    x_train, x_test, y_train, y_test = split_dataset(real_frame, test_size=0.2, random_state=42)
    assert (len(x_train), len(x_test)) == (16_512, 4_128)
    assert (len(y_train), len(y_test)) == (16_512, 4_128)


def test_outlier_rule_touches_few_training_rows(real_frame):
    x_train = split_dataset(real_frame, test_size=0.2, random_state=42)[0]
    clipper = build_preprocessor((0.001, 0.999)).fit(x_train).named_steps["outliers"]
    clipped = pd.DataFrame(clipper.transform(x_train), columns=x_train.columns, index=x_train.index)
    changed_rows = (clipped != x_train).any(axis=1).sum()
    assert 0 < changed_rows < 0.01 * len(x_train)
