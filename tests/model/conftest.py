"""The model tier needs the real dataset and one trained model: the session's real pipeline run on the
embedded SQLite store (``pipeline_run``; the modules' ``pytestmark`` picks the SQLite backend). Without the
dataset every test here fails with one sentence; none is skipped. PostgreSQL is not needed: a model behaves
the same wherever it is registered (the integration tier loads it through the tracking server)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def real_dataset_path(dataset_path: Path) -> Path:
    """The tier's declared need: the real dataset (fails every test here when it is missing)."""
    return dataset_path
