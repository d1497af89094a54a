"""Hostile clients against a real uvicorn server started with the flags of ``make serve``: every malformed
body is a cheap 4xx, every route has a body limit, a slow body is cut off, idle connections do not stop the
server, and a large hostile body never holds up the requests of others.

Most tests need no model: POST /predict checks and validates a body before it asks for the model, so a 4xx
here is the limits' answer and a valid body gets the 503 of a server without a model. One test serves the
pipeline's model to show that valid requests, a full batch included, still get their predictions.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from bench.hostile import HealthProbe
from housing.api.main import SERVER_FLAGS
from housing.schema import EXAMPLE_REQUEST
from tests.conftest import stage_env
from tests.server import FEEDBACK_HEADERS, FEEDBACK_TOKEN, ApiServer, server_env

JSON = {"Content-Type": "application/json"}
READ_TIMEOUT = 2.0
"""HOUSING_BODY_READ_TIMEOUT of the test server, short so that the slow client's test is quick."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A real server with an empty registry (no model) and a 2 s body read timeout, with the flags of make
    serve."""
    work_dir = tmp_path_factory.mktemp("hostile")
    env = server_env(stage_env(work_dir), HOUSING_BODY_READ_TIMEOUT=str(READ_TIMEOUT))
    with ApiServer(env, work_dir / "server.log", extra_args=SERVER_FLAGS) as api:
        yield api


def post(
    server: ApiServer, path: str, content: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, headers={**JSON, **(headers or {})}, timeout=60)


def resident_mb(pid: int) -> float:
    """The process's resident memory (VmRSS), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def while_probing(url: str, request: Callable[[], httpx.Response]) -> httpx.Response:
    """``request()``'s response; /health was probed meanwhile: at least one probe was asked and answered while
    the request was in flight (the event loop kept serving), every answer was a 200, also right after. How
    fast /health answered is a speed figure: bench/hostile.py measures it with the same probe (tests never
    assert timings)."""
    with HealthProbe(url) as probe:
        probe.in_flight.set()
        response = request()
        probe.in_flight.clear()
    assert probe.answered_in_flight >= 1, "no /health answer while the request was in flight"
    assert probe.statuses and set(probe.statuses) == {200}, probe.statuses
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    return response


# --- every malformed body is a cheap 4xx
# ---------------------------------------------------------------------
def test_a_body_nested_100000_deep_is_a_400(server):
    for path, depth in (("/predict", 100_000), ("/feedback", 60_000)):  # /feedback takes 64 KB at most
        response = post(server, path, b"[" * depth, FEEDBACK_HEADERS)
        assert response.status_code == 400, response.text
        assert response.json() == {
            "detail": "the body nests arrays and objects deeper than 8 levels (HOUSING_MAX_JSON_DEPTH)"
        }


def test_nan_next_to_a_5000_digit_integer_is_a_422_naming_the_limit(server):
    raw = b'{"MedInc": NaN, "HouseAge": ' + b"1" * 5000 + b', "AveRooms": 5.0}'
    for path in ("/predict", "/feedback"):
        response = post(server, path, raw, FEEDBACK_HEADERS)
        assert response.status_code == 422, response.text
        assert (
            "5,000 characters long; the limit is 40 (HOUSING_MAX_NUMBER_CHARS)" in response.json()["detail"]
        )


def test_a_nan_literal_is_still_named_by_its_field(server):
    response = post(server, "/predict", json.dumps(EXAMPLE_REQUEST).replace("3.5", "NaN").encode())
    assert response.status_code == 422
    assert response.json()["detail"].startswith("field MedInc: Input should be a finite number")


def test_a_60_kb_number_in_the_query_string_is_refused_by_its_length_and_health_answers_meanwhile(server):
    """The original report's query form: a 60 KB run of digits (about the most a client library sends) is a
    414 by the query's size, a 2,000-digit one a 422 by the number's length; neither reaches a pattern that
    could backtrack, so a stream of them keeps /health answering."""
    hostile = f"{server.url}/predict?MedInc={'1' * 60_000}x"

    def stream() -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return [client.post(hostile, content=b"") for _ in range(40)][-1]

    response = while_probing(server.url, stream)
    assert response.status_code == 414
    assert response.json() == {"detail": "the query string has 60,008 bytes; the limit is 2,048"}
    long_number = httpx.post(f"{server.url}/predict?MedInc={'1' * 2_000}x", content=b"", timeout=60)
    assert long_number.status_code == 422
    assert "2,001 characters; a number has at most 40" in long_number.json()["detail"]


def test_880000_keys_are_a_short_422_and_health_answers_meanwhile(server):
    raw = b"{" + b",".join(b'"%06d":0' % key for key in range(880_000)) + b"}"
    assert 9_500_000 < len(raw) < 10_305_536  # 9.6 MB, under POST /predict's body limit
    response = while_probing(server.url, lambda: post(server, "/predict", raw))
    assert response.status_code == 422 and len(response.content) <= 65_536
    assert response.json() == {
        "detail": "an object in the body has more than 64 keys (HOUSING_MAX_JSON_KEYS)"
    }


def test_a_batch_of_bad_rows_lists_20_errors_and_counts_the_rest(server):
    rows = [{**EXAMPLE_REQUEST, **{f"extra{key:02d}": 0 for key in range(56)}} for _ in range(10_000)]
    response = while_probing(server.url, lambda: post(server, "/predict", orjson.dumps(rows)))
    assert response.status_code == 422 and len(response.content) <= 65_536
    body = response.json()
    assert len(body["errors"]) == 20 and body["errors"][0]["row"] == 0
    assert body["detail"].endswith("(and 559,999 more error(s); the first 20 are listed)")


# --- every route has a body limit
# ------------------------------------------------------------------------------
def test_a_1_gb_body_to_feedback_is_refused_at_once_without_being_read(server):
    assert server.process is not None
    chunk = b"x" * 65_536

    sent = [0]

    def one_gigabyte() -> Iterator[bytes]:
        for _ in range(16_384):
            sent[0] += len(chunk)
            yield chunk

    before = resident_mb(server.process.pid)
    for declared in ({}, {"Content-Length": str(1 << 30)}):  # streamed (chunked), then with its size declared
        sent[0] = 0
        response = httpx.post(
            f"{server.url}/feedback",
            content=one_gigabyte(),
            headers={**FEEDBACK_HEADERS, **declared},
            timeout=30,
        )
        assert sent[0] < 64 << 20, (
            f"the client sent {sent[0]:,} bytes before the refusal"
        )  # a few socket buffers, not the gigabyte
        assert response.status_code == 413 and response.headers["connection"] == "close"
        assert response.json() == {
            "detail": "the request body is larger than 65,536 bytes (HOUSING_MAX_BODY_BYTES)"
        }
    assert resident_mb(server.process.pid) - before < 50


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/health"), ("POST", "/admin/reload"), ("GET", "/model")]
)
def test_every_route_has_a_body_limit(server, method, path):
    response = httpx.request(
        method, f"{server.url}{path}", content=b"{}" + b" " * 70_000, headers=JSON, timeout=30
    )
    assert response.status_code == 413 and "HOUSING_MAX_BODY_BYTES" in response.json()["detail"]


def test_predict_has_its_own_larger_limit(server):
    assert post(server, "/predict", b" " * 10_305_537).status_code == 413
    full_batch = orjson.dumps([EXAMPLE_REQUEST] * 10_000)
    assert (
        post(server, "/predict", full_batch).status_code == 503
    )  # checked and validated: only the model is missing


# --- slow and idle clients
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/feedback", "/predict"])
def test_a_body_sent_too_slowly_is_cut_off_with_408(server, path):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length:"
            " 100\r\n\r\n{".encode()
        )
        answer = sock.recv(4096)  # the socket's 10 s timeout fails the test if no answer comes
        while chunk := sock.recv(4096):  # the rest of the answer, then the server closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower()
    assert b"did not arrive within 2 seconds (HOUSING_BODY_READ_TIMEOUT)" in answer
    # a slow body that does arrive within the read timeout is read, not cut off: whatever the route then
    # answers (422: not a valid body), it is no 408
    body = b'{"request_id": "' + b"0" * 32 + b'", "actual": "not a number"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length:"
            f" {len(body)}\r\nAuthorization: Bearer {FEEDBACK_TOKEN}\r\n\r\n".encode()
        )
        for start in range(0, len(body), len(body) // 4 + 1):  # four pieces, a quarter of the timeout apart
            sock.sendall(body[start : start + len(body) // 4 + 1])
            threading.Event().wait(READ_TIMEOUT / 8)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 4") and not answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def test_500_idle_connections_do_not_stop_health(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(500)]
    try:
        for sock in idle[::2]:
            sock.sendall(
                b"GET /health HTTP/1.1\r\nHost: te"
            )  # half of them stop in the middle of their headers
        response = httpx.get(f"{server.url}/health", timeout=10)
        assert response.status_code == 200 and response.json() == {"status": "ok"}
        assert post(server, "/predict", json.dumps(EXAMPLE_REQUEST).encode()).status_code == 503
    finally:
        for sock in idle:
            sock.close()


# --- valid requests are answered as before
# --------------------------------------------------------------------
def test_valid_requests_get_their_predictions(pipeline_run, tmp_path):
    env = server_env(pipeline_run.env, HOUSING_PREDICTION_LOG_URL=pipeline_run.backend.new_log_url("hostile"))
    with ApiServer(env, tmp_path / "server.log", extra_args=SERVER_FLAGS) as api:
        api.wait_ready()
        single = post(api, "/predict", orjson.dumps(EXAMPLE_REQUEST))
        assert single.status_code == 200 and single.json()["MedHouseVal"] > 0
        batch = while_probing(
            api.url, lambda: post(api, "/predict", orjson.dumps([EXAMPLE_REQUEST] * 10_000))
        )
        assert batch.status_code == 200 and len(batch.json()["predictions"]) == 10_000
        feedback = post(
            api,
            "/feedback",
            orjson.dumps({"request_id": single.json()["request_id"], "actual": 2.0}),
            FEEDBACK_HEADERS,
        )
        assert feedback.status_code == 201
