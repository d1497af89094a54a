"""The original report's query-parameter request, parsed without a server: numbers as people write them, every
other text refused by field, a body beside a query refused, an oversized query string, too many fields or a
number too long refused before any pattern runs, and a number pattern that cannot backtrack.
"""

from __future__ import annotations

import pytest

from housing.api.problems import InputError
from housing.api.query_params import NUMBER, query_payload
from tests.helpers import finishes

ORIGINAL_QUERY = (
    b"MedInc=3.5&HouseAge=28&AveRooms=5.0&AveBedrms=1.04&Population=1500"
    b"&AveOccup=3.0&Latitude=34.2&Longitude=-118.3"
)


def test_the_original_reports_query_string_becomes_the_json_payload():
    assert query_payload(ORIGINAL_QUERY, b"", 40) == {
        "MedInc": 3.5,
        "HouseAge": 28.0,
        "AveRooms": 5.0,
        "AveBedrms": 1.04,
        "Population": 1500.0,
        "AveOccup": 3.0,
        "Latitude": 34.2,
        "Longitude": -118.3,
    }
    assert query_payload(ORIGINAL_QUERY, b"  \n", 40)["MedInc"] == 3.5  # a blank body is an empty body


@pytest.mark.parametrize("text", ["3.5", "+3.5", "-118.3", ".5", "5.", "1e3", "1E-3", " 3.5 "])
def test_numbers_as_people_write_them(text):
    assert query_payload(f"MedInc={text}".encode(), b"", 40)["MedInc"] == float(text)


@pytest.mark.parametrize("text", ["3,5", "1_000", "0x10", "nan", "inf", "Infinity", "", "3.5.1", "1e", "--1"])
def test_anything_else_is_not_a_number_naming_the_field(text):
    with pytest.raises(InputError) as raised:
        query_payload(f"MedInc={text}".encode(), b"", 40)
    assert raised.value.status == 422 and raised.value.detail.startswith("query parameter MedInc:")
    assert "is not a number" in raised.value.detail


def test_unknown_names_are_left_to_the_validator():
    assert query_payload(b"medinc=abc&x=1", b"", 40) == {"medinc": "abc", "x": 1.0}


@pytest.mark.parametrize(
    ("query", "body", "status", "words"),
    [
        (ORIGINAL_QUERY, b'{"MedInc": 3.5}', 400, "not both"),
        (b"MedInc=1&MedInc=2", b"", 422, "given twice"),
        (b"MedInc", b"", 400, "not valid"),
        (b"MedInc=%ff", b"", 400, "not valid"),
        (b"MedInc=" + b"1" * 65_536, b"", 414, "the limit is 2,048"),
        (b"MedInc=" + b"1" * 2_000, b"", 422, "2,000 characters; a number has at most 40"),
        (b"&".join(b"x%d=1" % index for index in range(17)), b"", 422, "17 fields; at most 16"),
    ],
)
def test_malformed_queries(query, body, status, words):
    with pytest.raises(InputError) as raised:
        query_payload(query, body, 40)
    assert raised.value.status == status and words in raised.value.detail


def test_the_number_pattern_takes_linear_time_on_a_long_almost_number():
    """A run of digits ending in a letter: a pattern that can split the digits two ways tries every split
    (quadratic: minutes at this length); this one answers at once. The deadline only ends the wait."""
    almost = "1" * 200_000 + "x"
    assert finishes(lambda: NUMBER.fullmatch(almost)) is None
