"""Successful JSON responses of the routes (errors are rendered by :mod:`housing.api.problems`)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response


def json_response(content: Any, status: int = 200) -> Response:
    """``content`` serialised with orjson, as an ``application/json`` response."""
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")
