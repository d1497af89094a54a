"""The integration tier needs the real dataset and runs the stage scripts, real servers and both backends:
SQLite files, and PostgreSQL with an MLflow tracking server. Without the dataset every test here fails with
one sentence; none is skipped. The PostgreSQL half carries the ``postgres`` marker (the ``backend_name``
fixture's parameter): without PostgreSQL it is skipped with one line saying how to run it, or fails with
HOUSING_REQUIRE_POSTGRES=1 (tests/conftest.py, tests/backends.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import PostgresProvider
from tests.conftest import PipelineRun, copy_run


@pytest.fixture(scope="session", autouse=True)
def real_dataset_path(dataset_path: Path) -> Path:
    """The tier's declared need: the real dataset (fails every test here when it is missing)."""
    return dataset_path


@pytest.fixture(scope="session")
def mutable_run(
    pipeline_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresProvider
) -> Iterator[PipelineRun]:
    """A copy of the pipeline run (its registry, tracking store and artifacts) per backend, for the tests that
    move aliases and retrain: what a second training run would give, without training again."""
    run = copy_run(pipeline_run, "mutable", tmp_path_factory, postgres)
    yield run
    run.backend.close()
