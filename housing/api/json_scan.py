"""Limits on what a JSON request body may hold, checked on its raw bytes before any parser or validator runs.

Why on the raw bytes: parsers and validators do work in proportion to what a body holds, and some of it
is unbounded or superlinear. One 9.6 MB object of 880,000 keys costs orjson 0.3 s with the GIL held (no
worker thread helps) and pydantic 880,000 error entries; ``'[' * 100_000`` sends Python's ``json`` into a
RecursionError; a 5,000-digit integer exceeds Python's int conversion limit. :func:`check_json_limits`
refuses such a body with one sentence: 400 when it nests deeper than ``max_json_depth``, 422 when an object
has more than ``max_json_keys`` keys (an array nested in the body: items), a string more than
``max_string_chars`` bytes or a number more than ``max_number_chars`` characters.

How it stays cheap: only C-speed operations on bytes (count, translate, split, one compiled regex), in
slices of :data:`SLICE_BYTES`, so its memory is bounded and a worker thread running it yields the GIL
between slices (a 9.6 MB body of 880,000 keys: refused in ~0.1 s, the GIL never held over ~10 ms). A body
too small to break a limit is let through after a glance (a single row: ~1 µs); a 10,000-row batch is
scanned exactly in ~10 ms. Strings are cut out first (brackets, commas
and digits inside them do not count); containers with few enough members are then pruned level by level
(``max_json_depth`` passes at most), and whatever survives names the broken limit. The top-level array is
exempt from the member limit (its length is the caller's: POST /predict checks ``max_batch_rows``).
Malformed JSON within the limits passes: the parser then says what is wrong, and cannot recurse deeper
than ``max_json_depth`` or meet a number longer than ``max_number_chars`` while doing so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import accumulate

from housing.api.problems import InputError
from housing.config.settings import Settings

SLICE_BYTES = 65_536
"""The scan works on slices of this size: a few MB of transient objects at most, and GIL breaks between
them."""

NUMBER_CHARS = b"+-.0123456789Ee"
_NUMBER_MASK = bytes(ord("1") if byte in NUMBER_CHARS else ord(" ") for byte in range(256))
"""translate() table: each character a number literal may hold becomes ``1``, every other byte a space."""
_GLANCE_MARKS = bytes(
    (
        ord("1")
        if byte in NUMBER_CHARS
        else ord("[")
        if byte in b"[{"
        else ord(",")
        if byte == ord(",")
        else ord(" ")
    )
    for byte in range(256)
)
"""translate() table of the glance: number characters become ``1``, opening brackets ``[``, commas stay, the
rest are spaces."""
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b"[]{},")
"""translate() deletes these, keeping the brackets and commas that give the structure."""
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
"""translate() table mapping braces to brackets: for nesting, an object is an array."""
_LEVEL_STEP = [1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256)]
"""How each structure byte moves the nesting level."""


@dataclass(frozen=True)
class JsonLimits:
    """The limits of one app, with the patterns the scan derives from them (built once per settings)."""

    max_depth: int
    max_keys: int
    max_number_chars: int
    max_string_chars: int
    long_number: bytes = field(init=False, repr=False)
    small_container: re.Pattern[bytes] = field(init=False, repr=False)
    wide_container: re.Pattern[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "long_number", b"1" * (self.max_number_chars + 1))
        object.__setattr__(self, "small_container", re.compile(rb"[\[{],{0,%d}[\]}]" % (self.max_keys - 1)))
        object.__setattr__(self, "wide_container", re.compile(rb"([\[{]),{%d,}" % self.max_keys))

    @classmethod
    def of(cls, settings: Settings) -> JsonLimits:
        """The limits ``settings`` sets; those of the last settings object asked for are kept (one identity
        check)."""
        last = _last_built.get("limits")
        if last is not None and last[0] is settings:
            return last[1]
        limits = cls(*(getattr(settings, name) for name in SETTING_NAMES))
        _last_built["limits"] = (settings, limits)
        return limits


SETTING_NAMES = ("max_json_depth", "max_json_keys", "max_number_chars", "max_string_chars")
"""The settings that give a :class:`JsonLimits`, in its fields' order."""
DEFAULT_JSON_LIMITS = JsonLimits(*(Settings.model_fields[name].default for name in SETTING_NAMES))
"""The limits of the default settings (for a caller without settings, as the unit tests)."""
_last_built: dict[str, tuple[Settings, JsonLimits]] = {}


def check_json_limits(body: bytes, limits: JsonLimits) -> int | None:
    """Raise :class:`InputError` (one sentence naming the limit) when ``body`` breaks one of ``limits``: its
    strings are checked first, then its numbers, its nesting and its containers' members.

    Returns the length of the body's top-level array when the scan counted it (the caller's limit; the
    scan does not count a body that fits at a glance, nor a top-level object), else None.
    """
    if fits_at_a_glance(body, limits):
        return None
    skeleton = strip_strings(body, limits.max_string_chars)
    masked = skeleton.translate(_NUMBER_MASK)
    first_long = masked.find(limits.long_number)  # where the first number too long starts
    if first_long >= 0:
        end = masked.find(b" ", first_long)
        length = (len(masked) if end < 0 else end) - first_long
        raise InputError(
            422,
            f"a number in the body is {length:,} characters long; the limit is {limits.max_number_chars} "
            "(HOUSING_MAX_NUMBER_CHARS)",
        )
    structure = skeleton.translate(None, _NOT_STRUCTURE)
    check_depth(structure, limits.max_depth)
    return check_members(structure, limits)


def fits_at_a_glance(body: bytes, limits: JsonLimits) -> bool:
    """True when ``body`` is too short for a long string, has too few commas for a wide container and too few
    brackets for deep nesting, and holds no long run of number characters anywhere (quoted or not)."""
    if len(body) > limits.max_string_chars:
        return False
    marks = body.translate(_GLANCE_MARKS)
    return (
        marks.count(b",") < limits.max_keys
        and marks.count(b"[") <= limits.max_depth
        and limits.long_number not in marks
    )


def strip_strings(body: bytes, max_string_chars: int) -> bytes:
    """``body`` with each string's content cut out (its quotes stay); 422 when a string is longer than the
    limit.

    Escaped backslashes and quotes are blanked first, so every quote left opens or closes a string (outside
    a string a backslash is invalid JSON, and no parser reads past it). Slice by slice, with the string
    open at a slice's end carried over.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    pieces: list[bytes] = []
    inside, open_length = False, 0
    for start in range(0, len(body), SLICE_BYTES):
        parts = body[start : start + SLICE_BYTES].split(b'"')
        first = 0 if inside else 1  # parts[first::2] are string contents, the others lie between strings
        ends_inside = (len(parts) - 1) % 2 == first
        longest = max(map(len, parts[first::2]), default=0)
        if inside:
            open_length += len(parts[0])
        if max(longest, open_length) > max_string_chars:
            raise InputError(
                422,
                f"a string in the body is longer than {max_string_chars:,} bytes (HOUSING_MAX_STRING_CHARS)",
            )
        if not ends_inside:
            open_length = 0
        elif len(parts) > 1:  # a string opens in this slice and goes on into the next
            open_length = len(parts[-1])
        pieces.append(b'"'.join(parts[1 - first :: 2]))
        inside = ends_inside
    return b"".join(pieces)


def check_depth(structure: bytes, max_depth: int) -> None:
    """400 when ``structure`` (the body's brackets and commas) nests deeper than ``max_depth``.

    Each pass removes every innermost pair, i.e. one level; what is left after ``max_depth`` passes is too
    deep, or unbalanced (malformed, left to the parser): the exact nesting of its prefixes tells which.
    """
    brackets = structure.translate(_BRACKETS_ONLY, b",")
    for _ in range(max_depth):
        if not brackets:
            return
        brackets = brackets.replace(b"[]", b"")
    if brackets and deepest_level(structure, max_depth) > max_depth:
        raise InputError(
            400, f"the body nests arrays and objects deeper than {max_depth} levels (HOUSING_MAX_JSON_DEPTH)"
        )


def check_members(structure: bytes, limits: JsonLimits) -> int | None:
    """422 when an object in ``structure`` has more than ``max_keys`` keys (a nested array: items); the
    top-level array is exempt, and its length is returned when every container inside it was counted.

    Containers with few enough members and none inside are pruned until none is left; one with too many
    is never pruned, and once its contents are, its commas stand in a row after its bracket.
    """
    top_array = structure[:1] == b"[" and structure[-1:] == b"]"
    inner = structure[1:-1] if top_array else structure
    if inner.count(b",") < limits.max_keys:  # no container can be too wide, and the top-level array is short
        return None
    for _ in range(limits.max_depth + 1):  # a pass removes a level at least, and the depth is checked
        pruned = prune_small_containers(inner, limits.small_container)
        if len(pruned) == len(inner):
            break
        inner = pruned
    wide = limits.wide_container.search(inner)
    if wide is not None:
        what = (
            "an object in the body has more than {} keys"
            if wide.group(1) == b"{"
            else "an array in the body has more than {} items"
        )
        raise InputError(422, what.format(f"{limits.max_keys:,}") + " (HOUSING_MAX_JSON_KEYS)")
    if not top_array or inner.translate(None, b","):  # brackets left: malformed, left to the parser
        return None
    return len(inner) + 1


def prune_small_containers(structure: bytes, small_container: re.Pattern[bytes]) -> bytes:
    """One pass: remove the empty containers, then those with few enough members (commas only inside).

    Done in slices cut just after a closing bracket, which no such container straddles.
    """
    structure = structure.replace(b"[]", b"").replace(b"{}", b"")
    pieces, start = [], 0
    while start < len(structure):
        end = start + SLICE_BYTES
        cut = max(structure.rfind(b"]", start, end), structure.rfind(b"}", start, end)) + 1
        if cut <= start:  # no closing bracket in this slice: cut after the next one
            later = [index for index in (structure.find(b"]", end), structure.find(b"}", end)) if index >= 0]
            cut = min(later) + 1 if later else len(structure)
        pieces.append(small_container.sub(b"", structure[start:cut]))
        start = cut
    return b"".join(pieces)


def deepest_level(structure: bytes, enough: int) -> int:
    """The deepest nesting a prefix of ``structure`` reaches (stops once past ``enough``), slice by slice."""
    level = peak = 0
    for start in range(0, len(structure), SLICE_BYTES):
        levels = list(
            accumulate(map(_LEVEL_STEP.__getitem__, structure[start : start + SLICE_BYTES]), initial=level)
        )
        highest = max(levels)
        level, peak = levels[-1], max(peak, highest)
        if peak > enough:
            break
    return peak
