"""What the tiers share: the stage-script helpers and the session fixtures more than one tier uses.

Nothing here runs unless a test asks for it, so ``tests/code`` needs nothing: no dataset, no store, no
server, no network. Each other tier says what it needs in its own conftest.py:

- ``tests/data``: the real dataset (``real_frame``);
- ``tests/model``: the real dataset and one real pipeline run on the embedded SQLite store (``pipeline_run``);
- ``tests/integration``: the real dataset and pipeline runs on both backends (``pipeline_run``,
  ``mutable_run``); the PostgreSQL half carries the ``postgres`` marker (see tests/backends.py).

The real dataset is HOUSING_DATA_SOURCE if set, else ../shared/data/california_housing.csv beside the
project. Without it the tiers that need it fail with one sentence; they never skip.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.backends import (
    BACKENDS,
    Backend,
    PostgresProvider,
    backup_sqlite,
    copy_backend,
    make_backend,
    postgres_unavailable,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from housing.config.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parent.parent
DATA_SOURCE = Path(
    os.environ.get("HOUSING_DATA_SOURCE") or PROJECT_DIR.parent / "shared" / "data" / "california_housing.csv"
)
"""Where the real dataset is expected; only the tiers that need it look there."""
TEST_ESTIMATOR_SCALE = "0.3"
"""Tests train with 30 % of the configured trees; the README run uses the full configuration."""
REQUIRE_POSTGRES = os.environ.get("HOUSING_REQUIRE_POSTGRES") == "1"
"""CI sets HOUSING_REQUIRE_POSTGRES=1: the PostgreSQL tests then fail instead of skipping."""


@pytest.fixture(scope="session")
def dataset_path() -> Path:
    """The real dataset's path. Its absence fails every test that asks for it, with one sentence, never a
    skip."""
    if not DATA_SOURCE.is_file():
        pytest.fail(
            f"this test tier needs the real California housing CSV at {DATA_SOURCE}: set HOUSING_DATA_SOURCE"
            " to its path",
            pytrace=False,
        )
    return DATA_SOURCE


@pytest.hookimpl(optionalhook=True)  # a run without pytest-xdist (-p no:xdist) ignores it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """How ``make test`` shares the tests between its two processes (pytest-xdist): every test of one backend
    (its id carries ``sqlite`` or ``postgres``) runs in one process, so each backend's pipeline is trained
    once and the two backends' halves run side by side; every other module goes whole to whichever process
    is free, so module fixtures are built once."""
    from xdist.scheduler import LoadScopeScheduling

    class BackendScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            name = nodeid.rpartition("::")[2]  # a parameter's id may hold "[" too: read from the first
            params = name.partition("[")[2][:-1].split("-") if name.endswith("]") else []
            backend = next((name for name in BACKENDS if name in params), None)
            return backend or super()._split_scope(nodeid)

    return BackendScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``postgres`` skip (one line, saying how to run them) when no PostgreSQL is available,
    or fail when HOUSING_REQUIRE_POSTGRES=1."""
    if item.get_closest_marker("postgres") is None:
        return
    reason = postgres_unavailable()
    if reason is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(f"HOUSING_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


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


def run_stage(
    script: str, *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a stage script of the project as a subprocess and return its completed process."""
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / script), *args],
        env=env,
        cwd=cwd or PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(
    script: str, *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`run_stage`'s answer without a new interpreter: the script runs in this process as
    ``python <script> <args>`` would run it (``__main__``, sys.argv, ``env`` as the whole environment,
    ``cwd``), and its exit code, stdout and stderr (its log lines included) come back the same way. For the
    stages whose behaviour does not depend on a fresh process: their imports are then paid once per test run.
    The environment, argv, working directory, logging handlers and MLflow's process-wide URIs are put back."""
    import mlflow.tracking._model_registry.utils as registry_uris  # mlflow: only tiers with a store need it
    import mlflow.tracking._tracking_service.utils as tracking_uris  # the process-wide URIs a stage sets

    uris = tracking_uris._tracking_uri, registry_uris._registry_uri
    saved = dict(os.environ), sys.argv, os.getcwd()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    code: int
    try:
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [str(PROJECT_DIR / script), *args]
        os.chdir(cwd or PROJECT_DIR)
        root.handlers = []  # the stage's logging.basicConfig then writes to the captured stderr
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(PROJECT_DIR / script), run_name="__main__")
                code = 0
            except SystemExit as exited:
                code = exited.code if isinstance(exited.code, int) else int(exited.code is not None)
    finally:
        os.environ.clear()
        os.environ.update(saved[0])
        sys.argv = saved[1]
        os.chdir(saved[2])
        tracking_uris._tracking_uri, registry_uris._registry_uri = uris
        root.handlers, root.level = handlers, level
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


@dataclass
class PipelineRun:
    """A finished load -> preprocess -> train -> promote run in a temp dir, on one backend."""

    work_dir: Path
    env: dict[str, str]
    outputs: dict[str, subprocess.CompletedProcess[str]]
    backend: Backend
    production_version: str
    """The version promote.py made production in this run (tests that move aliases start from it again)."""

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.env["HOUSING_ARTIFACTS_DIR"])

    def settings(self, **overrides: Any) -> Settings:
        from housing.config.settings import Settings

        return Settings(artifacts_dir=self.artifacts_dir, tracking_uri=self.tracking_uri, **overrides)

    def load_version(self, version: str | None = None) -> Pipeline:
        """A registered version's pipeline (the production alias's by default), loaded as the API loads it."""
        from housing.registry.versions import get_version_by_alias, load_version, registry_client

        client = registry_client(self.tracking_uri)
        found = (
            client.get_model_version("CaliforniaHousing", version)
            if version is not None
            else get_version_by_alias(client, "CaliforniaHousing", "production")
        )
        assert found is not None, "no production version"
        return load_version(client, found)


def run_pipeline(
    backend_name: str, label: str, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresProvider
) -> PipelineRun:
    """The four stage scripts, for real, with the real data, in a fresh temp dir on a fresh backend."""
    work_dir = tmp_path_factory.mktemp(f"{label}-{backend_name}")
    backend = make_backend(backend_name, work_dir, postgres, label)
    env = stage_env(work_dir, MLFLOW_TRACKING_URI=backend.tracking_uri, **backend.credentials_env())
    outputs = {}
    for script in ("load_data.py", "preprocess.py", "train.py", "promote.py"):
        result = run_stage(script, env=env, cwd=work_dir)
        assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
        outputs[script] = result
    from mlflow import (
        MlflowClient,
    )  # mlflow costs ~2 s to import: only the tiers that run the pipeline need it

    production = MlflowClient(backend.tracking_uri).get_model_version_by_alias(
        "CaliforniaHousing", "production"
    )
    return PipelineRun(work_dir, env, outputs, backend, str(production.version))


def copy_run(
    source: PipelineRun, label: str, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresProvider
) -> PipelineRun:
    """A copy of ``source`` in a fresh temp dir: its tracking store and model artifacts (tests/backends.py's
    copy_backend) and its artifacts folder (the dataset, the split, the production ledger); changes to either
    never reach ``source``."""
    work_dir = tmp_path_factory.mktemp(f"{label}-{source.backend.name}")
    backend = copy_backend(source.backend, work_dir, postgres, label)
    shutil.copytree(source.artifacts_dir, work_dir / "artifacts", ignore=shutil.ignore_patterns("*.db*"))
    for database in source.artifacts_dir.glob("*.db"):
        backup_sqlite(database, work_dir / "artifacts" / database.name)
    env = {
        **source.env,
        "MLFLOW_TRACKING_URI": backend.tracking_uri,
        "HOUSING_ARTIFACTS_DIR": str(work_dir / "artifacts"),
        **backend.credentials_env(),
    }
    return PipelineRun(work_dir, env, source.outputs, backend, source.production_version)


@pytest.fixture(
    scope="session",
    params=[
        pytest.param(name, marks=pytest.mark.postgres) if name == "postgres" else name for name in BACKENDS
    ],
)
def backend_name(request: pytest.FixtureRequest) -> str:
    """Each backend in turn; the PostgreSQL one carries the ``postgres`` marker."""
    return request.param


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresProvider]:
    """The session's PostgreSQL, started (or connected to) on first use only. The test process itself gets
    the tracking servers' credentials (MLFLOW_TRACKING_USERNAME / PASSWORD), so that an in-process
    MlflowClient on a PostgreSQL backend logs in like the stages do; the SQLite backend ignores them."""
    provider = PostgresProvider(tmp_path_factory.mktemp("postgres"))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in provider.tracking_credentials_env().items():
            patch.setenv(key, value)
        yield provider
    provider.close()


@pytest.fixture(scope="session")
def pipeline_run(
    backend_name: str,
    dataset_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresProvider,
) -> Iterator[PipelineRun]:
    """The four stage scripts run once, for real, with the real data, on each backend. Read-only for tests."""
    run = run_pipeline(backend_name, "pipeline", tmp_path_factory, postgres)
    yield run
    run.backend.close()
