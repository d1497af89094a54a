"""The one-call decoder of valid /predict bodies agrees with the documented validator: the same rows for every
valid body, and no answer (the detailed path then speaks) for every body the validator refuses."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from housing.api.row_decoding import decode_rows
from housing.api.schemas import many_rows_adapter, one_row_adapter
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES, FEATURES


def pydantic_rows(body: bytes) -> np.ndarray | None:
    """What the documented validator makes of ``body``: its rows, or None when it refuses it."""
    try:
        payload = orjson.loads(body)
        rows = (
            many_rows_adapter.validate_python(payload)
            if isinstance(payload, list)
            else [one_row_adapter.validate_python(payload)]
        )
    except (ValidationError, orjson.JSONDecodeError):
        return None
    if not rows:
        return None
    return np.array([[getattr(row, name) for name in FEATURE_NAMES] for row in rows])


def random_row(rng: np.random.Generator) -> dict[str, float]:
    return {spec.name: float(rng.uniform(spec.minimum + 1e-6, spec.maximum)) for spec in FEATURES}


EDGES = [
    {**EXAMPLE_REQUEST, "MedInc": 0},  # exclusive minimum
    {**EXAMPLE_REQUEST, "HouseAge": 0},  # inclusive minimum
    {**EXAMPLE_REQUEST, "MedInc": 25},  # maximum
    {**EXAMPLE_REQUEST, "MedInc": 25.0000001},
    {**EXAMPLE_REQUEST, "MedInc": "3.5"},
    {**EXAMPLE_REQUEST, "MedInc": True},
    {**EXAMPLE_REQUEST, "MedInc": None},
    {**EXAMPLE_REQUEST, "HouseAge": 28},  # an integer is a number
    {**EXAMPLE_REQUEST, "extra": 1},
    {name: value for name, value in EXAMPLE_REQUEST.items() if name != "Latitude"},
    {**EXAMPLE_REQUEST, "Longitude": [1]},
]


@pytest.mark.parametrize("edge", range(len(EDGES)))
def test_every_edge_of_the_contract_is_decided_as_the_validator_decides(edge):
    for body in (orjson.dumps(EDGES[edge]), orjson.dumps([EXAMPLE_REQUEST, EDGES[edge]])):
        expected, got = pydantic_rows(body), decode_rows(body)
        if expected is None:
            assert got is None, body
        else:
            assert got is not None and np.array_equal(got[0], expected), body


def test_random_valid_bodies_give_the_validators_rows_and_say_batch_or_not():
    rng = np.random.default_rng(7)
    rows = [random_row(rng) for _ in range(500)]
    single, expected = decode_rows(orjson.dumps(rows[0])), pydantic_rows(orjson.dumps(rows[0]))
    assert expected is not None
    assert single is not None and single[1] is False and np.array_equal(single[0], expected)
    batch, expected_batch = decode_rows(json.dumps(rows).encode()), pydantic_rows(orjson.dumps(rows))
    assert batch is not None and batch[1] is True and expected_batch is not None
    assert np.array_equal(batch[0], expected_batch)


@pytest.mark.parametrize("body", [b"", b"[]", b"{", b'{"MedInc": NaN}', b"[[1, 2]]", b'"text"', b"3"])
def test_what_is_not_a_valid_body_is_left_to_the_detailed_path(body):
    assert decode_rows(body) is None
