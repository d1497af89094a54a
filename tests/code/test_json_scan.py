"""The limits on what a client sends: the raw-bytes JSON scan (housing.api.json_scan), the body size and
read time middleware (housing.api.body_reading) and the capped error lists of the predict handler.

Pure functions and a pure ASGI middleware driven in memory: no dataset, no store, no server.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from housing.api import json_scan as json_limits
from housing.api.body_reading import BodyLimits
from housing.api.json_scan import DEFAULT_JSON_LIMITS, JsonLimits, check_json_limits, fits_at_a_glance
from housing.api.predict_handler import parse_json, validate_batch
from housing.api.problems import InputError, validation_problem
from housing.config.settings import Settings
from housing.schema import EXAMPLE_REQUEST

LIMITS = DEFAULT_JSON_LIMITS  # depth 8, 64 keys, numbers of 40 characters, strings of 256 bytes
ROW = orjson.dumps(EXAMPLE_REQUEST)


def refusal(body: bytes, limits: JsonLimits = LIMITS) -> tuple[int, str] | None:
    """(status, sentence) of the scan's refusal, or None when the body is within the limits."""
    try:
        check_json_limits(body, limits)
    except InputError as error:
        return error.status, error.detail
    return None


def nested(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"[1]" + b"}" * (depth - 1)


def members(count: int, *, array: bool = False) -> bytes:
    if array:
        return b"[[" + b",".join([b"1"] * count) + b"]]"  # nested: the top-level array has no member limit
    return b"{" + b",".join(b'"k%d": 1' % key for key in range(count)) + b"}"


# --- each limit: at it passes, past it is refused with one sentence naming it
# -------------------------------------
@pytest.mark.parametrize(
    ("within", "beyond", "status", "words"),
    [
        (nested(8), nested(9), 400, "deeper than 8 levels (HOUSING_MAX_JSON_DEPTH)"),
        (
            members(64),
            members(65),
            422,
            "an object in the body has more than 64 keys (HOUSING_MAX_JSON_KEYS)",
        ),
        (
            members(64, array=True),
            members(65, array=True),
            422,
            "an array in the body has more than 64 items (HOUSING_MAX_JSON_KEYS)",
        ),
        (
            b"[" + b"7" * 40 + b"]",
            b"[" + b"7" * 41 + b"]",
            422,
            "41 characters long; the limit is 40 (HOUSING_MAX_NUMBER_CHARS)",
        ),
        (
            b'["' + b"s" * 256 + b'"]',
            b'["' + b"s" * 257 + b'"]',
            422,
            "longer than 256 bytes (HOUSING_MAX_STRING_CHARS)",
        ),
        (
            b'{"' + b"k" * 256 + b'": 1}',
            b'{"' + b"k" * 257 + b'": 1}',
            422,
            "longer than 256 bytes (HOUSING_MAX_STRING_CHARS)",
        ),
    ],
    ids=["depth", "keys", "nested array items", "number", "string", "key"],
)
def test_each_limit_is_exact(within, beyond, status, words):
    assert refusal(within) is None
    code, sentence = refusal(beyond)  # type: ignore[misc]
    assert code == status and words in sentence and sentence.count(".") <= 1


def test_hostile_bodies_are_refused_with_one_sentence():
    assert refusal(b"[" * 100_000) == (
        400,
        "the body nests arrays and objects deeper than 8 levels (HOUSING_MAX_JSON_DEPTH)",
    )
    nan_and_long = b'{"MedInc": NaN, "HouseAge": ' + b"1" * 5000 + b"}"
    assert refusal(nan_and_long) == (
        422,
        "a number in the body is 5,000 characters long; the limit is 40 (HOUSING_MAX_NUMBER_CHARS)",
    )
    many_keys = b"{" + b",".join(b'"%06d":0' % key for key in range(880_000)) + b"}"
    assert refusal(many_keys) == (422, "an object in the body has more than 64 keys (HOUSING_MAX_JSON_KEYS)")


def test_a_wide_object_cannot_hide_among_empty_ones():
    hidden = b"[" + b"{}," * 20_000 + members(1_000) + b"]"  # the average object has few keys; one has 1,000
    assert refusal(hidden) == (422, "an object in the body has more than 64 keys (HOUSING_MAX_JSON_KEYS)")
    deep_behind_a_string = b'[[[[["]]]]]", [[[[1]]]]]]]]]'  # the string's brackets do not close anything
    refused = refusal(deep_behind_a_string)
    assert refused is not None and refused[0] == 400


def test_what_strings_hold_does_not_count():
    inside = json.dumps(
        {"a": "[[[[[[[[[[{{{{{{{{{{" + "," * 100 + "1" * 100, "b": 'say "hi" \\', "c": '\\\\\\"'}
    ).encode()
    assert refusal(inside) is None


def test_the_top_level_array_is_the_callers_to_limit():
    assert check_json_limits(orjson.dumps([EXAMPLE_REQUEST] * 1_000), LIMITS) == 1_000
    assert check_json_limits(b"[" + b"1," * 99_999 + b"1]", LIMITS) == 100_000
    assert check_json_limits(ROW, LIMITS) is None  # a single object: no array to count


def test_malformed_json_within_the_limits_is_left_to_the_parser():
    for malformed in (
        b'{"a": 1',
        b"]]]]]]]]]]]]",
        b"[1, 2,]",
        b"{'a': 1}",
        b'{"a": "unterminated',
        b"{[}]" * 20,
    ):
        assert not fits_at_a_glance(b" " * 300 + malformed, LIMITS)  # long enough to be scanned
        assert refusal(malformed) is None and refusal(b" " * 300 + malformed) is None


def test_a_single_row_fits_at_a_glance_and_a_batch_is_scanned():
    assert fits_at_a_glance(ROW, LIMITS)
    assert not fits_at_a_glance(orjson.dumps([EXAMPLE_REQUEST] * 2), LIMITS)


# --- the scan agrees with a parser on random documents, whatever the slicing
# -------------------------------------
@dataclass
class Document:
    """A random JSON text and what a parser finds in it."""

    text: bytes
    depth: int
    widest: int  # most members of a container other than the top-level array
    longest_string: int  # bytes of the longest string literal's content, as sent
    longest_number: int
    top_items: int | None


ALPHABET = 'ab1e,:[]{}"\\é '


def random_literal(rng: random.Random, kind: str) -> str:
    """A number or a string; now and then one over the test's limits (10 characters, 12 bytes)."""
    if kind == "number":
        digits = rng.choice([rng.randint(0, 8)] * 30 + [14])
        return (
            rng.choice(["", "-"])
            + rng.choice("123456789")
            + "".join(rng.choice("0123456789") for _ in range(digits))
        )
    length = rng.choice([rng.randint(0, 8)] * 30 + [16])
    return json.dumps("".join(rng.choice(ALPHABET) for _ in range(length)), ensure_ascii=False)


def random_value(rng: random.Random, level: int) -> tuple[str, int, int, int, int]:
    """(JSON text, depth, widest container, longest string, longest number) of a random value."""
    kind = rng.choice(
        ["number", "string", "array", "object", "array", "object"] if level < 6 else ["number", "string"]
    )
    if kind in ("number", "string"):
        literal = random_literal(rng, kind)
        return (
            (literal, 0, 0, len(literal.encode()) - 2, 0)
            if kind == "string"
            else (literal, 0, 0, 0, len(literal))
        )
    items = [random_value(rng, level + 1) for _ in range(rng.choice([rng.randint(0, 3)] * 12 + [8]))]
    keys = [random_literal(rng, "string") for _ in items] if kind == "object" else []
    if kind == "object":
        text = "{" + ", ".join(f"{key}: {item[0]}" for key, item in zip(keys, items, strict=True)) + "}"
    else:
        text = "[" + ", ".join(item[0] for item in items) + "]"
    return (
        text,
        1 + max((item[1] for item in items), default=0),
        max([len(items), *(item[2] for item in items)]),
        max([*(len(key.encode()) - 2 for key in keys), *(item[3] for item in items)], default=0),
        max((item[4] for item in items), default=0),
    )


def random_document(rng: random.Random) -> Document:
    items = [random_value(rng, 1) for _ in range(rng.randint(0, 12))]
    text = "[" + ", ".join(i[0] for i in items) + "]"
    return Document(
        text.encode(),
        1 + max((i[1] for i in items), default=0),
        max((i[2] for i in items), default=0),
        max((i[3] for i in items), default=0),
        max((i[4] for i in items), default=0),
        len(items),
    )


def expected_refusal(doc: Document, limits: JsonLimits) -> int | None:
    """The status the scan must answer: it checks strings, then numbers, then nesting, then members."""
    if doc.longest_string > limits.max_string_chars or doc.longest_number > limits.max_number_chars:
        return 422
    if doc.depth > limits.max_depth:
        return 400
    return 422 if doc.widest > limits.max_keys else None


@pytest.mark.parametrize("slice_bytes", [3, 16, 61, 65_536])
def test_the_scan_agrees_with_a_parser_on_random_documents(monkeypatch, slice_bytes):
    monkeypatch.setattr(json_limits, "SLICE_BYTES", slice_bytes)
    limits = JsonLimits(max_depth=4, max_keys=6, max_number_chars=10, max_string_chars=12)
    rng = random.Random(slice_bytes)
    seen = set()
    for _ in range(300):
        doc = random_document(rng)
        assert json.loads(doc.text) is not None
        try:
            counted = check_json_limits(doc.text, limits)
        except InputError as error:
            assert error.status == expected_refusal(doc, limits), doc
            seen.add(error.status)
            continue
        assert expected_refusal(doc, limits) is None, doc
        assert counted in (None, doc.top_items), doc
        seen.add(200)
    assert seen == {200, 400, 422}


# --- the handler: a body past a limit never reaches the parser; error lists are capped
# ---------------------------
def test_parse_json_refuses_hostile_bodies_without_a_500():
    with pytest.raises(InputError) as deep:
        parse_json(b"[" * 100_000)
    with pytest.raises(InputError) as long_number:
        parse_json(b'{"MedInc": NaN, "HouseAge": ' + b"1" * 5000 + b"}")
    assert (deep.value.status, long_number.value.status) == (400, 422)


def test_a_batch_longer_than_the_limit_is_refused_before_parsing():
    with pytest.raises(InputError) as caught:
        parse_json(b"[" + b"[]," * 99_999 + b"[]]", max_rows=10_000)
    assert (
        caught.value.status == 413
        and caught.value.detail == "the batch has 100,000 rows; the limit is 10,000 (HOUSING_MAX_BATCH_ROWS)"
    )


def test_error_lists_are_capped_and_the_rest_counted():
    rows = [{**EXAMPLE_REQUEST, "MedInc": 0, "junk": 1} for _ in range(3_000)]
    with pytest.raises(InputError) as caught:
        validate_batch(rows, max_rows=10_000, max_listed=20)
    assert caught.value.status == 422 and caught.value.errors is not None and len(caught.value.errors) == 20
    assert [entry["row"] for entry in caught.value.errors] == [row for row in range(10) for _ in range(2)]
    assert caught.value.detail.endswith("(and 5,999 more error(s); the first 20 are listed)")


def test_a_problem_listing_every_error_says_only_how_many_more():
    described = [{"message": f"field f{index}: wrong"} for index in range(3)]
    assert validation_problem(described).detail == "field f0: wrong (and 2 more error(s))"
    assert (
        validation_problem(described[:1], 3).detail
        == "field f0: wrong (and 2 more error(s); the first 1 are listed)"
    )


# --- the body middleware, driven in memory
# ------------------------------------------------------------------------
class Recorder:
    """An ASGI app that records the body it receives and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        self.bodies.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def call(
    settings: Settings, path: str, chunks: list[bytes], *, declared: int | None = None, stall: bool = False
) -> tuple[int, bytes, Recorder, int]:
    """Send ``chunks`` as a request's body to BodyLimits over a Recorder: (status, body, app, chunks read).

    With ``stall`` the client stops after the chunks; like the server, receive() then waits until the
    request is answered and reports a disconnect.
    """
    app, read, sent, answered = Recorder(), [0], [], asyncio.Event()
    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}

    async def receive() -> dict[str, Any]:
        if read[0] == len(chunks):
            await answered.wait()
            return {"type": "http.disconnect"}
        read[0] += 1
        return {
            "type": "http.request",
            "body": chunks[read[0] - 1],
            "more_body": read[0] < len(chunks) or stall,
        }

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    asyncio.run(BodyLimits(app, settings)(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), app, read[0]


SETTINGS = Settings(max_body_bytes=2_048, max_batch_rows=2, body_read_timeout=0.2)


def test_a_body_within_its_limit_reaches_the_app_whole():
    status, _, app, _ = call(SETTINGS, "/feedback", [b'{"request_id": ', b'"abc", "actual": 2.0}'])
    assert status == 200 and app.bodies == [b'{"request_id": "abc", "actual": 2.0}']


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    status, body, app, read = call(SETTINGS, "/feedback", [b"{}"], declared=10**9)
    assert (status, read, app.bodies) == (413, 0, [])
    assert orjson.loads(body) == {
        "detail": "the request body is larger than 2,048 bytes (HOUSING_MAX_BODY_BYTES)"
    }


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit():
    status, _, app, read = call(SETTINGS, "/feedback", [b" " * 1_000] * 100)
    assert (status, read, app.bodies) == (413, 3, [])


def test_predict_has_the_larger_limit_of_a_full_batch():
    status, _, app, _ = call(SETTINGS, "/predict", [b" " * 60_000])
    assert status == 200 and len(app.bodies[0]) == 60_000
    assert call(SETTINGS, "/predict", [b" " * 60_000] * 2)[0] == 413  # 2 rows x 1 KB + 64 KB


def test_a_body_that_stops_arriving_is_cut_off_with_408():
    status, body, app, _ = call(SETTINGS, "/feedback", [b"{"], stall=True)
    assert status == 408 and app.bodies == []
    assert orjson.loads(body) == {
        "detail": "the request body did not arrive within 0.2 seconds (HOUSING_BODY_READ_TIMEOUT)"
    }


def test_other_routes_get_their_json_checked_before_the_framework_parses_it():
    status, body, app, _ = call(SETTINGS, "/feedback", [b"[" * 1_000])
    assert status == 400 and app.bodies == [] and b"HOUSING_MAX_JSON_DEPTH" in body
    assert (
        call(SETTINGS, "/predict", [b"[" * 1_000])[0] == 200
    )  # POST /predict checks its own, in its handler


def test_one_clock_cuts_off_only_the_late_bodies():
    """The clock's one timer is set for the first deadline, finds that body complete, and is set again for the
    next: the body that stalls later is cut off at its own deadline, the prompt ones are not, and the one that
    started after the stalled one is answered before it."""
    limits = BodyLimits(Recorder(), Settings(body_read_timeout=0.3))
    finished: list[str] = []

    async def request(name: str, start_after: float, stall: bool) -> int:
        await asyncio.sleep(start_after)
        answered, statuses, parts = asyncio.Event(), [], [b"{", b"}"]

        async def receive() -> dict[str, Any]:
            if not parts or (stall and len(parts) == 1):
                await answered.wait()
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts)}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            elif not message.get("more_body", False):
                answered.set()

        scope = {"type": "http", "method": "POST", "path": "/feedback", "headers": []}
        await limits(scope, receive, send)
        finished.append(name)
        return statuses[0]

    async def all_three() -> list[int]:
        return list(
            await asyncio.gather(
                request("prompt", 0, stall=False),
                request("late", 0.1, stall=True),
                request("also prompt", 0.2, stall=False),
            )
        )

    assert asyncio.run(all_three()) == [200, 408, 200]
    assert finished == ["prompt", "also prompt", "late"]
