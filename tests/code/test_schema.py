"""The feature contract on tiny in-memory frames."""

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from housing.api.schemas import Feedback
from housing.schema import (
    COLUMN_NAMES,
    EXAMPLE_REQUEST,
    FEATURE_NAMES,
    SPECS_BY_NAME,
    TARGET,
    ContractError,
    validate_frame,
)


def tiny_frame(rows: int = 3) -> pd.DataFrame:
    return pd.DataFrame([{**EXAMPLE_REQUEST, TARGET.name: 2.0}] * rows)


def test_valid_frame_passes_in_contract_order():
    frame = tiny_frame()[list(reversed(COLUMN_NAMES))]
    checked = validate_frame(frame)
    assert tuple(checked.columns) == COLUMN_NAMES
    assert (checked.dtypes == "float64").all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.iloc[0:0], "no rows"),
        (lambda f: f.drop(columns="MedInc"), "missing column(s) MedInc"),
        (
            lambda f: f.rename(columns={"HouseAge": "house_age"}),
            "missing column(s) HouseAge (found unexpected house_age)",
        ),
        (lambda f: f.assign(extra=1.0), "unexpected column(s) extra"),
        (
            lambda f: f.assign(AveRooms=["5", "abc", "5"]),
            "column AveRooms has 1 non-numeric value(s), e.g. 'abc' in row 1",
        ),
        (lambda f: f.assign(Population=[1.0, np.nan, 2.0]), "column Population has 1 missing value(s)"),
        (lambda f: f.assign(MedInc=[1.0, np.inf, 2.0]), "column MedInc has 1 infinite value(s)"),
        (
            lambda f: f.assign(Latitude=[34.0, 51.5, 34.0]),
            "column Latitude has 1 value(s) outside the valid range",
        ),
        (
            lambda f: f.assign(Population=[-3.0, 10.0, 10.0]),
            "column Population has 1 value(s) outside the valid range (> 0",
        ),
    ],
)
def test_contract_violations_are_one_sentence(mutate, message):
    with pytest.raises(ContractError) as caught:
        validate_frame(mutate(tiny_frame()))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_numeric_strings_are_accepted_in_csv_data():
    frame = tiny_frame().astype({"HouseAge": str})
    assert validate_frame(frame)["HouseAge"].tolist() == [28.0] * 3


def test_features_only_validation():
    assert (
        tuple(validate_frame(tiny_frame()[list(FEATURE_NAMES)], require_target=False).columns)
        == FEATURE_NAMES
    )


def test_range_rules_are_inclusive_or_exclusive_as_declared():
    age, income = SPECS_BY_NAME["HouseAge"], SPECS_BY_NAME["MedInc"]
    assert age.in_range(np.array([0.0, 100.0])).all() and not age.in_range(np.array([100.1])).any()
    assert not income.in_range(np.array([0.0])).any() and income.rule() == "> 0 and <= 25"


@pytest.mark.parametrize("actual", [0.0, -1.0, 100.0001, float("nan"), float("inf")])
def test_a_label_outside_the_targets_range_is_refused(actual):
    with pytest.raises(ValidationError):
        Feedback.model_validate({"request_id": "0" * 32, "actual": actual})


def test_a_label_within_the_targets_range_is_accepted():
    for actual in (1e-6, 2.5, 100.0):
        assert Feedback.model_validate({"request_id": "0" * 32, "actual": actual}).actual == actual
