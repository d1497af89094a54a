"""Fixtures of the code tier (it needs nothing: no dataset, no server; SQLite files in a temp dir at most)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from housing.store.prediction_log import PredictionLog
from housing.store.tables import create_tables


@pytest.fixture
def log(tmp_path: Path) -> Iterator[PredictionLog]:
    """A prediction log on a fresh SQLite file, its tables created."""
    opened = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", flush_interval=0.01)
    create_tables(opened.engine)
    yield opened
    opened.engine.dispose()
