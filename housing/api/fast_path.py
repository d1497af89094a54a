"""The fast path: a pure ASGI middleware that answers ``POST /predict`` below FastAPI's router.

Why it exists: POST /predict is the hottest path by far, and for a single row most of a request's cost
is the framework, not the model: routing, dependency solving, building Request and Response objects.
Going around all of that saves most of the per-request cost. It calls the same
:func:`housing.api.predict_handler.handle_predict` as the documented route in ``routes/predict.py``,
which stays for the OpenAPI docs and answers when the app is built with ``fast_path=False``; the two
give the same status, body and content type (tests/integration/test_api_contract.py). Every other request
goes to the app unchanged. It sits in front of :class:`housing.api.body_reading.BodyLimits` and reads its body
with the same :func:`housing.api.body_reading.read_body`, within POST /predict's size limit and the read
timeout, so that the hottest request does not pay for a second layer.
"""

from __future__ import annotations

from typing import Any

from housing.api.body_reading import BodyClock, predict_body_limit, read_body, send_json
from housing.api.predict_handler import handle_predict
from housing.api.services import Services


class PredictFastPath:
    """Answers ``POST /predict`` with :func:`handle_predict` directly; passes every other request on."""

    def __init__(self, app: Any, services: Services) -> None:
        self.app = app
        self.services = services
        self.max_body_bytes = predict_body_limit(services.settings)
        self.clock = BodyClock(services.settings.body_read_timeout)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await read_body(scope, receive, send, self.max_body_bytes, self.clock)
        if body is None:  # answered 413 or 408, or the client is gone
            return
        status, content, headers = await handle_predict(
            self.services, body, scope.get("query_string", b""), scope["headers"], scope.get("client")
        )
        await send_json(send, status, content, headers)
