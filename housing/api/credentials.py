"""The labellers' credential: the bearer token of POST /feedback, from the environment or kept in a file.

``HOUSING_FEEDBACK_TOKEN`` wins. When it is unset, the API generates a token once and keeps it in
``<artifacts>/secrets/feedback_token`` (directory 0700, file 0600, never world-readable even for an
instant), where ``make simulate`` on the same machine finds it. The token itself is never logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets

from housing.config import Settings

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32
"""Random bytes of a generated token (43 URL-safe characters)."""


def environment_token(settings: Settings) -> str | None:
    """``settings.feedback_token`` (HOUSING_FEEDBACK_TOKEN), or None when it is unset or blank."""
    token = settings.feedback_token.get_secret_value().strip() if settings.feedback_token else ""
    return token or None


def read_token_file(settings: Settings) -> str | None:
    """The token kept in ``settings.feedback_token_path``, or None when the file is missing or empty."""
    try:
        token = settings.feedback_token_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
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
