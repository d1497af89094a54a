"""Errors a user can cause and fix, and how any error becomes one short sentence with no secret in it.

A :class:`UserError`'s message is one sentence; the stage scripts print it and exit non-zero.

Secrets out of everything shown: credentials in URIs become ``***`` before a URI reaches a response, a
log line, an error sentence, the data manifest or a tracking tag.

:func:`mask_uri` masks one URI: the password of its ``user:password@`` part (``user:***@``, a lone
``token@`` becomes ``***@``) and the values of query or fragment parameters named like credentials
(``token``, ``key``, ``sig``, ``X-Amz-*``...), leaving the scheme, host, path and other parameters as
they are; a string that is not a URL (a plain path) comes back unchanged. :func:`mask_text` masks every
URI quoted in free text (an exception's message), ``password=...``-style pairs, and, anywhere in the
text, the secrets of the URIs it is given (a driver may quote a password outside any URL).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus


class UserError(Exception):
    """A problem with the user's input or environment (bad data, missing artifact, unreachable server)."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type's name when the message is empty), at most ``limit``
    characters."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]


MASK = "***"

CREDENTIAL_PARAMS = frozenset(
    {
        "token",
        "key",
        "secret",
        "password",
        "passwd",
        "pwd",
        "sig",
        "signature",
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "sas",
    }
)
"""Parameter names whose values are masked (compared in lower case)."""
CREDENTIAL_PREFIXES = ("x-amz-", "x-goog-")
"""Signed-URL parameters of S3 and GCS: all masked."""
CREDENTIAL_WORDS = (
    "token",
    "secret",
    "passw",
    "credential",
    "signature",
    "apikey",
    "api_key",
    "api-key",
    "private",
)
"""A parameter whose name contains one of these (``client_secret``, ``refresh_token``) is masked too."""

MIN_KNOWN_SECRET = 3
"""Shorter known secrets are not struck out of free text (they would mangle ordinary words)."""

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)", re.DOTALL)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_LENIENT_USERINFO = re.compile(r"[^:/?#@]*:[^@]*@")
"""``user:pa/ss@`` with an unencoded ``/``, ``?`` or ``#`` in the password (SQLAlchemy accepts it)."""
_PORT_THEN_PATH = re.compile(r"[^:]*:\d*(?:[/?#].*)?@", re.DOTALL)
"""``host:8080/path@x``: a port and a path that holds an ``@``, not credentials."""
_KEY_VALUE = re.compile(r"(?P<key>[A-Za-z_][\w.\-]*)(?P<sep>\s*=\s*)(?P<value>[^\s&;,'\")]+)")


def is_credential_name(name: str) -> bool:
    """Whether a query parameter (or ``key=value`` key) named ``name`` carries a credential."""
    lowered = unquote_plus(name).strip().lower()
    return (
        lowered in CREDENTIAL_PARAMS
        or lowered.startswith(CREDENTIAL_PREFIXES)
        or any(word in lowered for word in CREDENTIAL_WORDS)
    )


def mask_uri(uri: str) -> str:
    """``uri`` with its password and credential-like parameter values replaced by ``***``; non-URLs
    unchanged."""
    match = _URL.fullmatch(uri)
    if match is None:
        return uri
    rest = match["rest"]
    userinfo, host_and_path = _split_userinfo(rest)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:{MASK}" if colon else MASK if user else "") + "@" + host_and_path
    head, tail = _split_at_query(rest)
    return f"{match['scheme']}://{head}{_mask_parameters(tail)}"


def mask_text(text: str, *known_uris: str) -> str:
    """``text`` with every URI in it masked, ``password=...``-style pairs masked, and every secret of
    ``known_uris`` (as written and percent-decoded) struck out wherever it appears."""
    masked = _URL_IN_TEXT.sub(lambda found: mask_uri(found[0]), text)
    masked = _KEY_VALUE.sub(
        lambda found: f"{found['key']}{found['sep']}{MASK}" if is_credential_name(found["key"]) else found[0],
        masked,
    )
    for secret in sorted(secrets_of(*known_uris), key=len, reverse=True):
        masked = masked.replace(secret, MASK)
    return masked


def secrets_of(*uris: str) -> set[str]:
    """The secrets the URIs carry (passwords, lone-user tokens, credential parameter values), as written
    and percent-decoded; those shorter than :data:`MIN_KNOWN_SECRET` are left out."""
    found: set[str] = set()
    for uri in uris:
        match = _URL.fullmatch(uri)
        if match is None:
            continue
        userinfo, host_and_path = _split_userinfo(match["rest"])
        if userinfo:
            user, colon, password = userinfo.partition(":")
            found.add(password if colon else user)
        _, tail = _split_at_query(host_and_path)
        for part in re.split(r"[?#&;]", tail):
            name, equals, value = part.partition("=")
            if equals and is_credential_name(name):
                found.add(value)
    decoded = {unquote(secret) for secret in found} | {unquote_plus(secret) for secret in found}
    return {secret for secret in found | decoded if len(secret) >= MIN_KNOWN_SECRET and secret != MASK}


def masked_first_line(error: BaseException, *known_uris: str, limit: int = 300) -> str:
    """The first line of ``error``'s message (its type's name when empty), masked with :func:`mask_text`
    *before* it is cut to ``limit`` characters, so that no half of a URI escapes the mask."""
    text = mask_text(str(error).strip() or type(error).__name__, *known_uris)
    return text.splitlines()[0][:limit]


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """(userinfo, what follows its ``@``) of the part after ``scheme://``; (None, rest) without userinfo."""
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        at = authority.rindex("@")
        return rest[:at], rest[at + 1 :]
    lenient = _LENIENT_USERINFO.match(rest)
    if lenient is not None and not _PORT_THEN_PATH.fullmatch(lenient[0]):
        return lenient[0][:-1], rest[lenient.end() :]
    return None, rest


def _split_at_query(rest: str) -> tuple[str, str]:
    """(host and path, ``?query#fragment``) of the part after ``scheme://`` (and userinfo)."""
    cut = re.search(r"[?#]", rest)
    return (rest, "") if cut is None else (rest[: cut.start()], rest[cut.start() :])


def _mask_parameters(tail: str) -> str:
    """``?a=1&token=x#access_token=y`` with the credential values masked; separators kept as written."""
    pieces = re.split(r"([?#&;])", tail)
    for index, piece in enumerate(pieces):
        name, equals, value = piece.partition("=")
        if equals and value and is_credential_name(name):
            pieces[index] = f"{name}={MASK}"
    return "".join(pieces)


_LOCAL_PATH = re.compile(r"(?<![\w:/.])/(?:[\w.@+-]+/)+([\w.@+-]+)")
"""An absolute file path in a sentence (not the path of a URL, which follows ``host``)."""


def hide_local_paths(text: str) -> str:
    """``text`` with every absolute file path cut to its last part: what an anonymous client may read of an
    error (the server's folders are none of its business)."""
    return _LOCAL_PATH.sub(lambda found: f".../{found[1]}", text)


def public_uri(uri: str) -> str:
    """``uri`` as an anonymous client may see it: credentials masked, a local file's path cut to its name."""
    masked = mask_uri(uri)
    scheme, separator, path = masked.partition(":///")
    if separator and scheme.startswith("sqlite"):
        return f"{scheme}:///.../{path.rsplit('/', 1)[-1]}" if "/" in path else masked
    return hide_local_paths(masked)
