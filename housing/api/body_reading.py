"""How much a client may send, and how slowly: reading a request's body within limits, below the framework.

Why below the framework: FastAPI reads a request body whole, however large, and waits for it as long as
the client likes, before any route code runs; the uvicorn server has no limit on a body's size nor on the
time it takes. :func:`read_body` reads it within two limits, and :class:`BodyLimits`, a pure ASGI
middleware, does so for every request before the app sees it (POST /predict's fast path, which sits in
front of it, reads its body with the same function):

- size: POST /predict may send :func:`predict_body_limit` bytes (a full batch of ``max_batch_rows`` rows,
  1 KB each, plus 64 KB), every other route ``max_body_bytes``. A Content-Length above the limit is refused
  before a byte of the body is read; a body without one (chunked) as soon as its bytes pass the limit: 413.
  At most the limit is ever held in memory.
- time: the whole body must arrive within ``body_read_timeout`` seconds: 408, sent by :class:`BodyClock`,
  which keeps one timer for all requests (an ``asyncio.timeout`` per request cost 4-5 µs, a tenth of a
  single-row prediction; the clock costs about 0.5 µs).
- content: the body of every route but POST /predict is checked against the JSON limits
  (housing.api.json_scan) before the framework parses it; POST /predict's handler checks its own (in a
  worker thread when the body is large).

A 413 or 408 closes the connection (``connection: close``): the client may still be sending. BodyLimits
hands the body on to the app as one message; the app's later receive() calls reach the server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from housing.api.json_scan import JsonLimits, check_json_limits
from housing.api.problems import InputError, problem_body
from housing.config.settings import Settings

JSON_HEADERS = [(b"content-type", b"application/json")]
CLOSE = [(b"connection", b"close")]

logger = logging.getLogger(__name__)


def predict_body_limit(settings: Settings) -> int:
    """The largest body POST /predict accepts: ``max_batch_rows`` rows of 1 KB each, plus 64 KB."""
    return settings.max_batch_rows * 1024 + 65_536


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length, or None without one (the server has already refused a malformed one)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimits:
    """Reads every request's body within its size and time limits (413, 408), checks the JSON limits of
    every route but POST /predict, then calls the app with the body."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.max_body_bytes = settings.max_body_bytes
        self.max_predict_bytes = predict_body_limit(settings)
        self.clock = BodyClock(settings.body_read_timeout)
        self.json_limits = JsonLimits.of(settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        predict = scope["path"] == "/predict" and scope["method"] == "POST"
        body = await read_body(
            scope, receive, send, self.max_predict_bytes if predict else self.max_body_bytes, self.clock
        )
        if body is None:
            return
        if body and not predict:
            try:
                check_json_limits(body, self.json_limits)
            except InputError as error:
                await send_json(send, error.status, problem_body(error.detail), [])
                return
        await self.app(scope, replay(body, receive), send)


async def read_body(
    scope: dict[str, Any], receive: Any, send: Any, limit: int, clock: BodyClock
) -> bytes | None:
    """The request's whole body; None once the request is answered 413 (past ``limit`` bytes, or a larger
    Content-Length) or 408 (by ``clock``), or when the client is gone."""
    declared = declared_length(scope["headers"])
    if declared is not None and declared > limit:
        await send_json(send, 413, problem_body(too_large(limit, scope)), CLOSE)
        return None
    chunks: list[bytes] = []
    size = 0
    reading = clock.start(send)
    try:
        while True:
            message = await receive()
            if reading.cut_off or message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_json(send, 413, problem_body(too_large(limit, scope)), CLOSE)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    finally:
        clock.stop(reading)


async def send_json(send: Any, status: int, content: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """Send a complete JSON response over raw ASGI."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(content)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": content})


class Reading:
    """One body being read: when it must be complete, how to answer its request, and whether it was cut
    off."""

    __slots__ = ("cut_off", "deadline", "send")

    def __init__(self, deadline: float, send: Any) -> None:
        self.deadline, self.send, self.cut_off = deadline, send, False


class BodyClock:
    """Cuts off every body still arriving ``timeout`` seconds after its request started, with one timer for
    all: the readings are kept in the order they started, which (one timeout for all) is their deadlines'.
    A late request is answered 408 (connection closed) from a task of its own; the server then ends the
    request's pending receive()."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.readings: dict[Reading, None] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.answers: set[asyncio.Task[None]] = set()

    def start(self, send: Any) -> Reading:
        """Start the clock of a request's body; ``send`` answers the request if it is late."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new event loop (an app served again): forget the old one's readings
            self.loop, self.timer, self.readings = loop, None, {}
        reading = Reading(loop.time() + self.timeout, send)
        self.readings[reading] = None
        if self.timer is None:
            self.timer = loop.call_at(reading.deadline, self.cut_off_late)
        return reading

    def stop(self, reading: Reading) -> None:
        """The body is complete (or the request is over): no deadline any more."""
        self.readings.pop(reading, None)

    def cut_off_late(self) -> None:
        """Answer 408 to every reading past its deadline; set the timer for the next deadline."""
        assert self.loop is not None
        self.timer, now = None, self.loop.time()
        while self.readings:
            reading = next(iter(self.readings))
            if reading.deadline > now:
                self.timer = self.loop.call_at(reading.deadline, self.cut_off_late)
                return
            del self.readings[reading]
            reading.cut_off = True
            answer = self.loop.create_task(self.answer_late(reading.send))
            self.answers.add(answer)
            answer.add_done_callback(self.answers.discard)

    async def answer_late(self, send: Any) -> None:
        """408, and the connection closed."""
        detail = (
            f"the request body did not arrive within {self.timeout:g} seconds (HOUSING_BODY_READ_TIMEOUT)"
        )
        try:
            await send_json(send, 408, problem_body(detail), CLOSE)
        except Exception:  # the client may be gone already; nothing else to do
            logger.debug("could not answer a late request body with 408", exc_info=True)


def too_large(limit: int, scope: dict[str, Any]) -> str:
    """The sentence of a 413: the limit and the setting that sets it."""
    setting = (
        "HOUSING_MAX_BATCH_ROWS KB + 64 KB"
        if scope["path"] == "/predict" and scope["method"] == "POST"
        else "HOUSING_MAX_BODY_BYTES"
    )
    return f"the request body is larger than {limit:,} bytes ({setting})"


def replay(body: bytes, receive: Any) -> Any:
    """A receive() that returns ``body`` as one message, then hands on to the server's (disconnects)."""
    sent = False

    async def receive_body() -> dict[str, Any]:
        nonlocal sent
        if sent:
            message: dict[str, Any] = await receive()
            return message
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_body
