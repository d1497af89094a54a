"""Who is calling: the labellers of POST /feedback and the clients of POST /predict, by their bearer tokens.

The default labeller's token: ``HOUSING_FEEDBACK_TOKEN`` wins. When it is unset, the API generates a token
once and keeps it in ``<artifacts>/secrets/feedback_token`` (directory 0700, file 0600, never
world-readable even for an instant), where ``make simulate`` on the same machine finds it. Named labellers
have tokens of their own in the prediction-log database (:mod:`housing.store.labellers`), which
:class:`LabellerDirectory` re-reads every few seconds, so a rotated or revoked token stops working without a
restart. Clients of POST /predict are named by ``HOUSING_PREDICT_TOKENS`` (:class:`ClientDirectory`); without
it /predict is open and a client is known by its address. Tokens are compared by their SHA-256 (a dictionary
look-up of a digest reveals nothing of a token), and never logged.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from housing.config.serving import MIN_TOKEN_CHARS, parse_client_tokens
from housing.config.settings import Settings
from housing.errors import UserError, first_line
from housing.store.labellers import active_digests, token_digest

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32
"""Random bytes of a generated token (43 URL-safe characters)."""


def environment_token(settings: Settings) -> str | None:
    """``settings.feedback_token`` (HOUSING_FEEDBACK_TOKEN), or None when it is unset or blank."""
    token = settings.feedback_token.get_secret_value().strip() if settings.feedback_token else ""
    return token or None


def read_token_file(settings: Settings) -> str | None:
    """The token kept in ``settings.feedback_token_path``, or None when the file is missing or empty;
    :class:`UserError` when it is too short to guard anything."""
    try:
        token = settings.feedback_token_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if token and len(token) < MIN_TOKEN_CHARS:
        raise UserError(
            f"the feedback token kept in {settings.feedback_token_path} has fewer than {MIN_TOKEN_CHARS}"
            " characters: delete the file and the API generates a new one"
        )
    return token or None


def resolve_feedback_token(settings: Settings) -> str | None:
    """The feedback token a client should send: HOUSING_FEEDBACK_TOKEN, else the kept file's; None if
    neither."""
    return environment_token(settings) or read_token_file(settings)


def ensure_feedback_token(settings: Settings) -> str:
    """The feedback token the API accepts: HOUSING_FEEDBACK_TOKEN, else the kept file's, else a new one
    written there with owner-only permissions. Workers starting together agree on one token."""
    token = environment_token(settings)
    if token:
        logger.info("feedback token: from HOUSING_FEEDBACK_TOKEN")
        return token
    settings.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(settings.secrets_dir, 0o700)
    token = read_token_file(settings)
    if token:
        logger.info("feedback token: kept in %s", settings.feedback_token_path)
        return token
    token = write_new_token(settings)
    logger.info(
        "feedback token: generated in %s (owner-only); make simulate reads it from there",
        settings.feedback_token_path,
    )
    return token


def write_new_token(settings: Settings) -> str:
    """Generate a token and publish it atomically at ``feedback_token_path``; if another process published
    one first, that one wins and is returned. The file is created 0600, never wider."""
    path = settings.feedback_token_path
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # atomic, and fails if another worker published first
        except FileExistsError:
            existing = read_token_file(settings)
            if existing:
                return existing
            os.replace(temporary, path)  # an empty file is no token: replace it
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return token


class LabellerDirectory:
    """Which labeller a feedback token belongs to: the default labeller's token (set at startup) and the named
    labellers' digests, re-read by :meth:`refresh`."""

    def __init__(self, default_name: str) -> None:
        self.default_name = default_name
        self._default_digest: str | None = None
        self._named: dict[str, str] = {}
        self.loaded = False
        """Whether a token is known yet (False: every label is a 503 until the startup sets one)."""

    def set_default_token(self, token: str) -> None:
        self._default_digest = token_digest(token)
        self.loaded = True

    def refresh(self, engine: Engine) -> None:
        """Re-read the named labellers (kept as they were when the database cannot be read)."""
        try:
            self._named = active_digests(engine)
        except SQLAlchemyError as error:
            logger.warning("labellers: could not re-read the named labellers (%s)", first_line(error))
            return
        self.loaded = True

    def labeller(self, token: str) -> str | None:
        """The name ``token`` belongs to, or None for an unknown token."""
        digest = token_digest(token)
        if self._default_digest is not None and hmac.compare_digest(digest, self._default_digest):
            return self.default_name
        return self._named.get(digest)

    @property
    def named(self) -> int:
        """How many named labellers are registered (0: the default labeller alone)."""
        return len(self._named)


class ClientDirectory:
    """Which client a /predict bearer token belongs to (``HOUSING_PREDICT_TOKENS``); without tokens every
    caller is let through, known by its address."""

    def __init__(self, settings: Settings) -> None:
        tokens = settings.predict_tokens.get_secret_value() if settings.predict_tokens else ""
        self._by_digest = {token_digest(token): name for token, name in parse_client_tokens(tokens).items()}

    @property
    def required(self) -> bool:
        return bool(self._by_digest)

    def client(self, headers: list[tuple[bytes, bytes]], peer: Any) -> tuple[int, str]:
        """(0, the client's name) for a known bearer token, or (0, its address) when no token is required;
        else (401 or 403, the sentence that says why)."""
        if not self._by_digest:
            return 0, str(peer[0]) if peer else "unknown"
        authorization = next((value for name, value in headers if name == b"authorization"), None)
        if authorization is None:
            return 401, "POST /predict needs a client token: send 'Authorization: Bearer <token>'"
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        name = self._by_digest.get(token_digest(token.strip())) if scheme.lower() == "bearer" else None
        if name is None:
            return 403, "unknown client token"
        return 0, name
