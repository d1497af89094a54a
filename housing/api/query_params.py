"""POST /predict with the 8 features as query parameters and an empty body: the original report's request.

The original report documented its endpoint as ``curl -X POST '.../predict?MedInc=3.5&HouseAge=28&...' -d
''``. That request gets the same prediction as the JSON body, through the same validator
(:func:`housing.api.predict_handler.validate_row`), so the same field names, ranges and unknown-field rule
apply. Query values are text, so each must look like a number (``3.5``, ``-118.3``, ``1e3``; not ``3,5``,
``1_000`` or ``0x10``) or it is a 422 naming the field; a field given twice is a 422; a query string and a
body together are a 400, since it is not clear which one was meant.

Every check runs in time linear in the query's length, bounded before any pattern runs: the query string is
at most :data:`MAX_QUERY_BYTES` (414 past it), holds at most :data:`MAX_QUERY_FIELDS` fields, and a value
longer than the body's ``max_number_chars`` is refused by its length alone, as a JSON number is; the number
pattern itself has no nested or overlapping repetition, so it cannot backtrack.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from housing.api.problems import InputError, validation_problem
from housing.schema import SPECS_BY_NAME

NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
"""A decimal number as a person writes it (what float() accepts, minus underscores, hex, 'nan' and 'inf'
words). Each digit can be matched one way only, so a match takes linear time."""
MAX_QUERY_BYTES = 2_048
"""Longest query string: the 8 features with 40-character values take about 500 bytes."""
MAX_QUERY_FIELDS = 16
"""Most name=value pairs a query string may hold (the 8 features, and room to name a few unknown ones)."""


def query_payload(query: bytes, body: bytes, max_number_chars: int) -> dict[str, Any]:
    """The query string's fields as a payload for the row validator; InputError for a bad query string."""
    if body.strip():
        raise InputError(
            400,
            "send the 8 features either as query parameters with an empty body or as a JSON body, not both",
        )
    if len(query) > MAX_QUERY_BYTES:
        raise InputError(414, f"the query string has {len(query):,} bytes; the limit is {MAX_QUERY_BYTES:,}")
    if query.count(b"&") >= MAX_QUERY_FIELDS:
        raise InputError(
            422, f"the query string has {query.count(b'&') + 1:,} fields; at most {MAX_QUERY_FIELDS} are read"
        )
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InputError(
            400, "the query string is not valid: expected name=value pairs joined by '&'"
        ) from None
    payload: dict[str, Any] = {}
    described: list[dict[str, Any]] = []
    for name, text in pairs:
        if name in payload:
            described.append(_error(name, "given twice", "duplicate"))
        elif len(text) > max_number_chars:
            payload[name] = text[:max_number_chars]
            described.append(
                _error(
                    name,
                    f"{len(text):,} characters; a number has at most {max_number_chars}"
                    " (HOUSING_MAX_NUMBER_CHARS)",
                    "number_too_long",
                )
            )
        elif NUMBER.fullmatch(text.strip()):
            payload[name] = float(text)
        else:
            payload[name] = text  # an unknown field is named by the validator; a known one is not a number:
            if name in SPECS_BY_NAME:
                described.append(
                    _error(
                        name,
                        f"{text[:40]!r} is not a number; valid: {SPECS_BY_NAME[name].rule()} "
                        f"{SPECS_BY_NAME[name].unit}",
                        "float_parsing",
                    )
                )
    if described:
        raise validation_problem(described)
    return payload


def _error(field: str, message: str, kind: str) -> dict[str, Any]:
    return {"row": None, "field": field, "type": kind, "message": f"query parameter {field}: {message}"}
