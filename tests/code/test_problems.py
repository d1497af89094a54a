"""How client errors are rendered: one sentence naming the row, the field and the rule, in one problem body.

Pure functions on in-memory values: no dataset, no store, no server.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from housing.api.predict_handler import parse_json
from housing.api.problems import (
    InputError,
    describe_errors,
    handle_http_exception,
    handle_request_validation_error,
    problem_body,
    problem_response,
    validation_problem,
)
from housing.api.schemas import Feedback, many_rows_adapter, one_row_adapter
from housing.schema import EXAMPLE_REQUEST

REQUEST = Request({"type": "http", "method": "POST", "path": "/", "headers": []})


def pydantic_errors(payload: Any, *, batch: bool) -> list[Any]:
    adapter = many_rows_adapter if batch else one_row_adapter
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python(payload)
    return list(caught.value.errors())


def test_an_out_of_range_field_names_the_field_the_rule_and_the_unit():
    [entry] = describe_errors(
        pydantic_errors({**EXAMPLE_REQUEST, "Latitude": 45.0}, batch=False), batch=False
    )
    assert entry["row"] is None and entry["field"] == "Latitude" and entry["type"] == "less_than_equal"
    assert (
        entry["message"]
        == "field Latitude: Input should be less than or equal to 42.1; valid: >= 32.4 and <= 42.1 degrees"
        " north"
    )


def test_a_batch_error_names_the_row():
    rows = [EXAMPLE_REQUEST, EXAMPLE_REQUEST, {**EXAMPLE_REQUEST, "Population": 0}]
    [entry] = describe_errors(pydantic_errors(rows, batch=True), batch=True)
    assert entry["row"] == 2 and entry["field"] == "Population"
    assert entry["message"].startswith(
        "row 2, field Population: Input should be greater than 0; valid: > 0 and <= 100000 people"
    )


def test_a_string_number_is_named_as_such():
    [entry] = describe_errors(
        pydantic_errors({**EXAMPLE_REQUEST, "HouseAge": "28"}, batch=False), batch=False
    )
    assert entry["message"] == "field HouseAge: must be a JSON number, not a string"


def test_an_unknown_field_lists_the_expected_ones():
    [entry] = describe_errors(pydantic_errors({**EXAMPLE_REQUEST, "medinc": 3.5}, batch=False), batch=False)
    assert entry["field"] == "medinc" and entry["type"] == "extra_forbidden"
    assert (
        entry["message"]
        == "field medinc: unknown field (expected only MedInc, HouseAge, AveRooms, AveBedrms, Population,"
        " AveOccup, Latitude, Longitude)"
    )


def test_a_missing_field_has_no_rule_appended():
    payload = {key: value for key, value in EXAMPLE_REQUEST.items() if key != "MedInc"}
    [entry] = describe_errors(pydantic_errors(payload, batch=False), batch=False)
    assert entry["message"] == "field MedInc: Field required"


def test_a_body_that_is_not_an_object_is_named_the_body():
    [entry] = describe_errors(pydantic_errors(42, batch=False), batch=False)
    assert entry["field"] is None and entry["message"].startswith("the body: ")


def test_the_prefix_and_expected_fields_of_another_model():
    errors = [
        {
            "loc": ("body", "extra"),
            "msg": "Extra inputs are not permitted",
            "type": "extra_forbidden",
            "input": 1,
        }
    ]
    [entry] = describe_errors(errors, batch=False, prefix=("body",), expected=tuple(Feedback.model_fields))
    assert entry["message"] == "field extra: unknown field (expected only request_id, actual)"


def test_one_error_is_one_sentence():
    problem = validation_problem(
        describe_errors(pydantic_errors({**EXAMPLE_REQUEST, "MedInc": 0}, batch=False), batch=False)
    )
    assert (
        problem.status == 422
        and problem.detail.startswith("field MedInc: ")
        and "more error" not in problem.detail
    )
    assert problem.errors is not None and len(problem.errors) == 1


def test_more_errors_are_counted_after_the_first():
    payload = {**EXAMPLE_REQUEST, "MedInc": 0, "Latitude": 0, "Longitude": 0}
    described = describe_errors(pydantic_errors(payload, batch=False), batch=False)
    problem = validation_problem(described)
    assert len(described) == 3 and problem.errors == described
    assert problem.detail == described[0]["message"] + " (and 2 more error(s))"


def test_the_problem_body_has_errors_only_when_given():
    assert orjson.loads(problem_body("the batch is empty")) == {"detail": "the batch is empty"}
    errors = [
        {"row": 0, "field": "MedInc", "type": "missing", "message": "row 0, field MedInc: Field required"}
    ]
    assert orjson.loads(problem_body("row 0, field MedInc: Field required", errors)) == {
        "detail": "row 0, field MedInc: Field required",
        "errors": errors,
    }


def test_the_problem_response_carries_status_type_and_headers():
    response = problem_response(503, "no model is loaded", headers={"Retry-After": "10"})
    assert response.status_code == 503 and response.media_type == "application/json"
    assert response.headers["retry-after"] == "10" and orjson.loads(response.body) == {
        "detail": "no model is loaded"
    }


def test_an_http_exception_keeps_its_headers():
    error = HTTPException(401, "missing admin token", headers={"WWW-Authenticate": "Bearer"})
    response = asyncio.run(handle_http_exception(REQUEST, error))
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert orjson.loads(response.body) == {"detail": "missing admin token"}


def test_framework_validation_errors_render_like_the_predict_handler():
    invalid_json = RequestValidationError(
        [{"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error", "input": {}}]
    )
    response = asyncio.run(handle_request_validation_error(REQUEST, invalid_json))
    assert response.status_code == 400 and orjson.loads(response.body) == {
        "detail": "the request body is not valid JSON"
    }
    missing = RequestValidationError(
        [{"type": "missing", "loc": ("body", "actual"), "msg": "Field required", "input": {}}]
    )
    response = asyncio.run(handle_request_validation_error(REQUEST, missing))
    body = orjson.loads(response.body)
    assert (
        response.status_code == 422
        and body["detail"] == "field actual: Field required"
        and body["errors"][0]["field"] == "actual"
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "body is empty"),
        (b" \n\t", "body is empty"),
        (b'{"MedInc": 3.5,', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"{'MedInc': 3.5}", "not valid JSON"),
    ],
)
def test_parse_json_refuses_with_one_sentence(body, words):
    with pytest.raises(InputError) as caught:
        parse_json(body)
    assert caught.value.status == 400 and words in caught.value.detail and caught.value.errors is None


def test_parse_json_lets_non_finite_literals_through_to_the_validator():
    parsed = parse_json(b'{"MedInc": NaN, "HouseAge": Infinity, "AveRooms": -Infinity}')
    assert math.isnan(parsed["MedInc"]) and parsed["HouseAge"] == math.inf and parsed["AveRooms"] == -math.inf
    [entry, *_] = describe_errors(
        pydantic_errors({**EXAMPLE_REQUEST, "MedInc": parsed["MedInc"]}, batch=False), batch=False
    )
    assert entry["field"] == "MedInc" and "finite" in entry["message"]


def test_parse_json_reads_objects_and_lists():
    assert parse_json(b'{"MedInc": 3.5}') == {"MedInc": 3.5}
    assert parse_json(b"[1, 2]") == [1, 2]
