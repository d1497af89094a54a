"""An older prediction log gains the champion/challenger columns in place on PostgreSQL, also when several
processes open it at once, and keeps every old row readable (the SQLite half is in tests/code/test_shadow.py).
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import text

from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES
from housing.store.prediction_log import PredictionLog
from housing.store.tables import create_tables, make_engine, prediction_rows
from tests.postgres import create_database, database_url

OLD_SCHEMA = (
    "CREATE TABLE predictions (request_id VARCHAR(32) PRIMARY KEY, created_at TIMESTAMP WITH TIME ZONE NOT"
    " NULL, "
    + ", ".join(f'"{name}" FLOAT NOT NULL' for name in FEATURE_NAMES)
    + ", prediction FLOAT NOT NULL, model_name VARCHAR(200) NOT NULL, model_version VARCHAR(20) NOT NULL, "
    "latency_ms FLOAT NOT NULL)"
)


@pytest.mark.postgres
def test_an_older_postgresql_log_is_migrated_once_by_racing_processes(postgres):
    name = f"log_migration_{uuid.uuid4().hex[:8]}"
    create_database(postgres.admin_url, name)
    url = database_url(postgres.admin_url, name)
    engine = make_engine(url)
    values = ", ".join(["'old'", "now()", *["1.0"] * len(FEATURE_NAMES), "2.0", "'M'", "'1'", "1.5"])
    with engine.begin() as connection:
        connection.execute(text(OLD_SCHEMA))
        connection.execute(text(f"INSERT INTO predictions VALUES ({values})"))
    engines = [make_engine(url) for _ in range(4)]
    with ThreadPoolExecutor(
        4
    ) as pool:  # four "processes" open the old log at once: each adds what is missing
        list(pool.map(create_tables, engines))
    log = PredictionLog(url)
    features = np.array([[EXAMPLE_REQUEST[n] for n in FEATURE_NAMES]])
    log.append(
        prediction_rows(
            ["new"],
            features,
            [2.5],
            model_name="M",
            model_version="2",
            latency_ms=1.0,
            created_at=log.timestamp(datetime.now(UTC)),
            shadow=[2.7],
            shadow_version="3",
        )
    )
    assert log.flush()
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "select request_id, served_alias, shadow_prediction, shadow_model_version "
                "from predictions order by request_id"
            )
        ).all()
    assert [tuple(row) for row in rows] == [("new", "production", 2.7, "3"), ("old", None, None, None)]
    for opened in (engine, *engines, log.engine):
        opened.dispose()
