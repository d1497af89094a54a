"""Shared fixtures: the real dataset, subprocess helpers, and one real pipeline run per test session.

The data source is the real California housing CSV: HOUSING_DATA_SOURCE if set, else
../shared/data/california_housing.csv beside the project. A missing file fails the tests; it never skips them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.backends import BACKENDS, Backend, PostgresProvider, make_backend

PROJECT_DIR = Path(__file__).resolve().parent.parent
DATA_SOURCE = Path(os.environ.get("HOUSING_DATA_SOURCE") or PROJECT_DIR.parent / "shared" / "data" / "california_housing.csv")
TEST_ESTIMATOR_SCALE = "0.3"
"""Tests train with 30 % of the configured trees; the README run uses the full configuration."""


def pytest_configure(config: pytest.Config) -> None:
    if not DATA_SOURCE.exists():
        raise pytest.UsageError(f"the real dataset is needed at {DATA_SOURCE}; set HOUSING_DATA_SOURCE")


@pytest.fixture(scope="session")
def real_frame() -> pd.DataFrame:
    """The real dataset, read the way load_data reads it."""
    from housing.data import read_source

    return read_source(str(DATA_SOURCE))


def stage_env(work_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for stage subprocesses: a temp MLflow SQLite store and artifacts dir under ``work_dir``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HOUSING_", "MLFLOW_"))}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{work_dir / 'mlflow.db'}",
        HOUSING_ARTIFACTS_DIR=str(work_dir / "artifacts"),
        HOUSING_DATA_SOURCE=str(DATA_SOURCE),
        HOUSING_ESTIMATOR_SCALE=TEST_ESTIMATOR_SCALE,
        PYTHONWARNINGS="default",
    )
    env.update(extra)
    return env


def run_stage(script: str, *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a stage script of the project as a subprocess and return its completed process."""
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / script), *args],
        env=env,
        cwd=cwd or PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class PipelineRun:
    """A finished load -> preprocess -> train -> promote run in a temp dir, on one backend."""

    work_dir: Path
    env: dict[str, str]
    outputs: dict[str, subprocess.CompletedProcess[str]]
    backend: Backend

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.env["HOUSING_ARTIFACTS_DIR"])

    def settings(self, **overrides: object):
        from housing.config import Settings

        return Settings(artifacts_dir=self.artifacts_dir, tracking_uri=self.tracking_uri, **overrides)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory):
    provider = PostgresProvider(tmp_path_factory.mktemp("postgres"))
    yield provider
    provider.close()


def _run_pipeline(backend_name: str, label: str, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresProvider):
    work_dir = tmp_path_factory.mktemp(f"{label}-{backend_name}")
    backend = make_backend(backend_name, work_dir, postgres, label)
    env = stage_env(work_dir, MLFLOW_TRACKING_URI=backend.tracking_uri)
    outputs = {}
    for script in ("load_data.py", "preprocess.py", "train.py", "promote.py"):
        result = run_stage(script, env=env, cwd=work_dir)
        assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
        outputs[script] = result
    return PipelineRun(work_dir, env, outputs, backend)


@pytest.fixture(scope="session", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def pipeline_run(backend_name, tmp_path_factory, postgres):
    """The four stage scripts run once, for real, with the real data, on each backend. Read-only for tests."""
    run = _run_pipeline(backend_name, "pipeline", tmp_path_factory, postgres)
    yield run
    run.backend.close()


@pytest.fixture(scope="session")
def mutable_run(backend_name, tmp_path_factory, postgres):
    """A second, separate pipeline run per backend, for the tests that move aliases and retrain."""
    run = _run_pipeline(backend_name, "mutable", tmp_path_factory, postgres)
    yield run
    run.backend.close()
