"""The fast path of a valid /predict body: decoded and validated against the feature contract in one C call.

A valid body is the common case and it needs no error list: msgspec decodes the JSON bytes straight into
structs built from the contract (:data:`housing.schema.FEATURES`: the same names, the same bounds, unknown
fields refused, numbers only, no booleans, no NaN), without a Python dict per row, and the rows become the
(n, 8) float64 array the model takes. Anything msgspec refuses is not answered from here: the caller parses
and validates it again with pydantic, which names every error of every row the way the API documents
(:mod:`housing.api.predict_handler`). So a valid body costs one C call, and an invalid one gets exactly the
answer it got before.

The JSON limits (:mod:`housing.api.json_scan`) are checked before this, on the raw bytes, as for every body.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np

from housing.schema import FEATURE_NAMES, FEATURES, ColumnSpec


def _field(spec: ColumnSpec) -> tuple[str, Any]:
    low = (
        msgspec.Meta(gt=spec.minimum, le=spec.maximum)
        if spec.exclusive_minimum
        else msgspec.Meta(ge=spec.minimum, le=spec.maximum)
    )
    return spec.name, Annotated[float, low]


Row = msgspec.defstruct("Row", [_field(spec) for spec in FEATURES], forbid_unknown_fields=True)
"""One district's 8 features, as the contract bounds them."""
_decode = msgspec.json.Decoder(Row | list[Row]).decode  # type: ignore[valid-type]
_values = attrgetter(*FEATURE_NAMES)


def decode_rows(body: bytes) -> tuple[np.ndarray, bool] | None:
    """The body's rows as an (n, 8) float64 array in contract order and whether it was a batch (a JSON
    array); None when the body is not a valid single row or a valid non-empty batch (the caller's detailed
    path then says why)."""
    try:
        decoded = _decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if isinstance(decoded, list):
        if not decoded:
            return None
        return np.array([_values(row) for row in decoded], dtype=np.float64), True
    return np.array([_values(decoded)], dtype=np.float64), False
