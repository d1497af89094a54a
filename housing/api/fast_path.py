"""The fast path: a pure ASGI middleware that answers ``POST /predict`` below FastAPI's router.

Why it exists: POST /predict is the hottest path by far, and for a single row most of a request's cost
is the framework, not the model: routing, dependency solving, building Request and Response objects.
Going around all of that saves most of the per-request cost. It calls the same
:func:`housing.api.predict_handler.handle_predict` as the documented route in ``routes/predict.py``,
which stays for the OpenAPI docs and answers when the app is built with ``fast_path=False``; the two
give the same status, body and content type (tests/integration/test_fast_path.py). Every other request
goes to the app unchanged.
"""

from __future__ import annotations

from typing import Any

from housing.api.predict_handler import Headers, handle_predict
from housing.api.problems import problem_body
from housing.api.services import Services

JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictFastPath:
    """Answers ``POST /predict`` with :func:`handle_predict` directly; passes every other request on."""

    def __init__(self, app: Any, services: Services) -> None:
        self.app = app
        self.services = services
        self.max_body_bytes = services.settings.max_batch_rows * 1024 + 65_536

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await send_json(send, 413, problem_body(f"the request body is larger than {self.max_body_bytes:,} bytes"), [])
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        status, content, headers = await handle_predict(self.services, b"".join(chunks))
        await send_json(send, status, content, headers)


async def send_json(send: Any, status: int, content: bytes, headers: Headers) -> None:
    """Send a complete JSON response over raw ASGI."""
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*JSON_HEADERS, (b"content-length", str(len(content)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": content})
