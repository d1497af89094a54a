"""The data tier needs the real dataset (HOUSING_DATA_SOURCE, or ../shared/data/california_housing.csv):
without it every test here fails with one sentence; none is skipped. No store, no server, no PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="session", autouse=True)
def real_dataset_path(dataset_path: Path) -> Path:
    """The tier's declared need: the real dataset (fails every test here when it is missing)."""
    return dataset_path


@pytest.fixture(scope="session")
def real_frame(real_dataset_path: Path) -> pd.DataFrame:
    """The real dataset, read the way load_data reads it."""
    from housing.data.dataset import read_source

    return read_source(str(real_dataset_path))
