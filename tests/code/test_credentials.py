"""The labellers' credential: where the feedback token comes from, how it is kept, and that it is never logged
(temp dirs only: no dataset, no store, no server)."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from housing.api.credentials import ensure_feedback_token, resolve_feedback_token
from housing.config.settings import Settings
from housing.errors import UserError

KEPT = "kept-token-0123456789abcdef-0123456789"
ENVIRONMENT_TOKEN = "env-secret-token-value-0123456789abcdef"


def settings_in(artifacts_dir: Path, **overrides: object) -> Settings:
    """Settings with their own artifacts dir and, unless given, no feedback token from the environment."""
    options: dict[str, Any] = {"feedback_token": None, **overrides}
    return Settings(artifacts_dir=artifacts_dir, **options)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_resolve_finds_nothing_when_neither_is_set(tmp_path):
    settings = settings_in(tmp_path / "artifacts")
    assert resolve_feedback_token(settings) is None
    assert not settings.feedback_token_path.exists()  # resolving never creates a token


def test_the_environment_token_wins_over_the_file(tmp_path):
    settings = settings_in(tmp_path / "artifacts", feedback_token="from-the-environment-0123456789abcdef")
    settings.secrets_dir.mkdir(parents=True)
    settings.feedback_token_path.write_text("from-the-file\n")
    assert resolve_feedback_token(settings) == "from-the-environment-0123456789abcdef"
    assert ensure_feedback_token(settings) == "from-the-environment-0123456789abcdef"
    assert settings.feedback_token_path.read_text() == "from-the-file\n"  # left alone


def test_resolve_reads_the_file_when_the_environment_is_unset(tmp_path):
    settings = settings_in(tmp_path / "artifacts")
    settings.secrets_dir.mkdir(parents=True)
    settings.feedback_token_path.write_text(KEPT + "\n")
    assert resolve_feedback_token(settings) == "kept-token-0123456789abcdef-0123456789"
    assert (
        resolve_feedback_token(settings_in(tmp_path / "artifacts", feedback_token="  "))
        == "kept-token-0123456789abcdef-0123456789"
    )  # blank = unset


def test_ensure_creates_an_owner_only_token_and_keeps_it(tmp_path):
    settings = settings_in(tmp_path / "artifacts")
    token = ensure_feedback_token(settings)
    assert len(token) >= 32
    assert mode(settings.secrets_dir) == 0o700 and mode(settings.feedback_token_path) == 0o600
    assert settings.feedback_token_path.read_text().strip() == token
    assert ensure_feedback_token(settings) == token  # the second call (the next start) reads the same token
    assert resolve_feedback_token(settings) == token  # what make simulate finds
    assert sorted(path.name for path in settings.secrets_dir.iterdir()) == [
        "feedback_token"
    ]  # no temp file left


def test_ensure_tightens_an_existing_secrets_dir(tmp_path):
    settings = settings_in(tmp_path / "artifacts")
    settings.secrets_dir.mkdir(parents=True, mode=0o755)
    os.chmod(settings.secrets_dir, 0o755)
    ensure_feedback_token(settings)
    assert mode(settings.secrets_dir) == 0o700


def test_the_file_is_never_world_readable_even_under_a_lax_umask(tmp_path):
    settings = settings_in(tmp_path / "artifacts")
    previous = os.umask(0)
    try:
        ensure_feedback_token(settings)
    finally:
        os.umask(previous)
    assert mode(settings.feedback_token_path) == 0o600 and mode(settings.secrets_dir) == 0o700


def test_an_empty_token_file_is_replaced(tmp_path):
    settings = settings_in(tmp_path / "artifacts")
    settings.secrets_dir.mkdir(parents=True)
    settings.feedback_token_path.write_text("\n")
    assert resolve_feedback_token(settings) is None
    token = ensure_feedback_token(settings)
    assert token and settings.feedback_token_path.read_text().strip() == token


def test_workers_starting_together_agree_on_one_token(tmp_path):
    settings = settings_in(tmp_path / "artifacts")
    tokens: list[str] = []
    threads = [
        threading.Thread(target=lambda: tokens.append(ensure_feedback_token(settings))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert settings.feedback_token_path.read_text().strip() == tokens[0]


@pytest.mark.parametrize("from_environment", [False, True], ids=["generated", "environment"])
def test_the_token_never_appears_in_the_log(tmp_path, caplog, from_environment):
    settings = settings_in(
        tmp_path / "artifacts",
        **({"feedback_token": ENVIRONMENT_TOKEN} if from_environment else {}),
    )
    with caplog.at_level(logging.DEBUG):
        token = ensure_feedback_token(settings)
        ensure_feedback_token(settings)
        resolve_feedback_token(settings)
    assert token not in caplog.text
    if not from_environment:
        assert str(settings.feedback_token_path) in caplog.text  # it says where the token is, not what it is


def test_a_short_token_is_refused_in_one_sentence_from_the_environment_or_a_file(tmp_path):
    with pytest.raises(ValidationError, match="a token needs at least 32 characters"):
        settings_in(tmp_path / "artifacts", feedback_token="guessable")
    with pytest.raises(ValidationError, match="a token needs at least 32 characters"):
        Settings(admin_token="admin")
    settings = settings_in(tmp_path / "artifacts")
    settings.secrets_dir.mkdir(parents=True)
    settings.feedback_token_path.write_text("short\n")
    with pytest.raises(UserError, match="has fewer than 32 characters"):
        resolve_feedback_token(settings)
