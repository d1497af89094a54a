"""Settings of the API: the prediction log, the champion and the challenger, the limits on what a client
controls, and the credentials (part of :class:`housing.config.settings.Settings`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

MIN_TOKEN_CHARS = 32
"""Shortest bearer token accepted in a setting: a guessable token guards nothing."""
CLIENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
"""A client's or a labeller's name: lower-case letters, digits, '_', '.', '-', at most 64 characters."""


class ServingSettings(BaseSettings):
    """How the API serves, logs, limits and authenticates."""

    # --- serving ------------------------------------------------------------------------------------
    prediction_log_url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the prediction-log database (predictions, labels, production ledger, locks, "
            "retraining rows); unset means SQLite at <artifacts>/prediction_log.db."
        ),
    )
    max_batch_rows: int = Field(10_000, ge=1, description="Most rows one /predict request may carry.")
    reload_interval: float = Field(10.0, gt=0, description="Seconds between checks of the production alias.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of POST /admin/reload; unset disables it."
    )
    feedback_token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token of POST /feedback (the labellers' credential); unset means the token generated "
            "in <artifacts>/secrets/feedback_token (owner-only), shared by make serve and make simulate."
        ),
    )
    unsafe_open_feedback: bool = Field(
        False,
        description=(
            "UNSAFE: accept labels on POST /feedback without a token, from anyone who can reach the API "
            "(label poisoning). Only for a private demo."
        ),
    )
    default_labeller: str = Field(
        "default",
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="The labeller HOUSING_FEEDBACK_TOKEN (or the generated token) speaks for.",
    )
    shared_state_refresh_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "Seconds between re-reads of what the workers share in the log's database: the named labellers'"
            " tokens, the prediction intervals' online state."
        ),
    )
    feedback_labels_per_second: float = Field(
        100.0, gt=0, description="Labels one labeller may send per second, per API worker (429 past it)."
    )
    feedback_label_burst: int = Field(
        2_000, ge=1, description="Labels one labeller may send at once before the per-second rate applies."
    )
    label_price_tolerance: float = Field(
        1.5,
        gt=1,
        description=(
            "A label is plausible within the data's range of values at the served version's price index,"
            " widened by this factor each way (422 outside)."
        ),
    )
    predict_tokens: SecretStr | None = Field(
        None,
        description=(
            "Clients allowed to call POST /predict, as name=token pairs joined by commas; unset: anyone may"
            " (each client then known by its address)."
        ),
    )
    predict_rows_per_second: float = Field(
        20_000.0, gt=0, description="Rows one client may have predicted per second, per API worker (429)."
    )
    predict_row_burst: int = Field(
        20_000, ge=1, description="Rows one client may send at once before the per-second rate applies."
    )
    log_min_free_mb: float = Field(
        256.0,
        ge=0,
        description="Free disk space (MB) below which POST /predict answers 503 before the log's disk fills.",
    )
    log_dead_letter_tries: int = Field(
        5, ge=1, description="Failed inserts of one row before it goes to the dead-letter file."
    )
    serve_intervals: bool = Field(
        True,
        description="Answer every prediction with its calibrated range (false: point predictions only).",
    )
    log_flush_interval: float = Field(
        0.2, gt=0, description="Seconds between batched writes of the prediction log."
    )

    # --- champion and challenger -----------------------------------------------------------------
    canary_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description=(
            "Share of requests (%) the challenger (the staging alias, when it names another version than"
            " production) answers for real, chosen by a stable hash of X-Routing-Key (else the request id);"
            " 0: shadow only."
        ),
    )
    promotion_mode: Literal["direct", "shadow"] = Field(
        "direct",
        description=(
            "direct: a retrained winner replaces production through the gate; shadow: it becomes the"
            " challenger (staging) and live paired evidence decides (promote.py --from-shadow, and every"
            " monitor run)."
        ),
    )
    shadow_max_wait_hours: float = Field(
        72.0,
        ge=0,
        description=(
            "A challenger without enough live evidence this long after it first scored traffic is dropped."
        ),
    )
    shadow_interval: float = Field(
        0.02, gt=0, le=1, description="Seconds between the shadow scorer's passes."
    )

    # --- hardening: limits on what a client controls, outages ------------------------------------
    max_body_bytes: int = Field(
        65_536, ge=1_024, description="Largest request body of every route but POST /predict (413 above)."
    )
    max_json_depth: int = Field(
        8, ge=2, description="Deepest nesting of arrays/objects a JSON body may have (a valid one has 2)."
    )
    max_json_keys: int = Field(
        64, ge=8, description="Most keys one JSON object of a body may have (a valid one has 8)."
    )
    max_number_chars: int = Field(40, ge=8, description="Longest number literal a JSON body may hold.")
    max_string_chars: int = Field(256, ge=16, description="Longest string a JSON body may hold.")
    max_listed_errors: int = Field(
        20, ge=1, description="Validation errors listed in a 4xx body (the count of the rest is given)."
    )
    body_read_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a whole request body (408 after)."
    )
    log_buffer_max_rows: int = Field(
        100_000,
        ge=1_000,
        description=(
            "Prediction-log rows kept in memory; past it (or while the database is down) rows spill to disk."
        ),
    )
    db_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to connect to the prediction-log database before giving up."
    )
    db_statement_timeout: float = Field(
        5.0, gt=0, description="Seconds one statement on the prediction-log database may take."
    )
    download_timeout: float = Field(
        30.0, gt=0, description="Seconds load_data waits on an http(s) data source."
    )
    download_max_bytes: int = Field(
        200_000_000, ge=1_000, description="Largest data source load_data reads (bytes)."
    )

    @field_validator("admin_token", "feedback_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and 0 < len(value.get_secret_value().strip()) < MIN_TOKEN_CHARS:
            raise ValueError(f"a token needs at least {MIN_TOKEN_CHARS} characters (a random one: 43)")
        return value

    @field_validator("predict_tokens")
    @classmethod
    def _client_tokens(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_client_tokens(value.get_secret_value())
        return value


def parse_client_tokens(text: str) -> dict[str, str]:
    """``name=token,name=token`` as token -> name; ValueError (naming no token) when malformed or short."""
    clients: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, equals, token = pair.partition("=")
        if not equals or not CLIENT_NAME.match(name.strip()):
            raise ValueError(
                "predict_tokens must be name=token pairs joined by commas (names: lower-case letters, digits,"
                " '_', '.', '-')"
            )
        if len(token.strip()) < MIN_TOKEN_CHARS:
            raise ValueError(f"client {name.strip()!r}'s token needs at least {MIN_TOKEN_CHARS} characters")
        clients[token.strip()] = name.strip()
    return clients
