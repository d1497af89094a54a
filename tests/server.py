"""A real uvicorn server process for integration tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PROJECT_DIR = Path(__file__).resolve().parent.parent


FEEDBACK_TOKEN = "test-feedback-token-0123456789abcdef"
"""The labellers' bearer token of every test server (HOUSING_FEEDBACK_TOKEN) unless a test sets its own."""
FEEDBACK_HEADERS = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
"""The header a labeller sends with POST /feedback."""

GRACEFUL_EXIT = (0, -signal.SIGTERM)
"""uvicorn re-raises the signal after its graceful shutdown, so a clean stop by SIGTERM exits with -15."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    """``uvicorn app:app`` on a free local port, started for real and stopped with SIGTERM (graceful)."""

    def __init__(self, env: dict[str, str], log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.log_path = log_path
        self.extra_args = extra_args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> ApiServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                *self.extra_args,
            ],
            cwd=PROJECT_DIR,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.log_path.read_text()}")

    def wait_ready(self, timeout: float = 60, workers: int = 1) -> dict:
        """/ready's answer once it is 200 and, with several ``workers``, once each of them has loaded the
        production model (counted in /metrics, which needs PROMETHEUS_MULTIPROC_DIR in the server's
        environment): /ready answers from whichever worker took the connection."""
        assert workers == 1 or "PROMETHEUS_MULTIPROC_DIR" in self.env, (
            "counting workers takes multiprocess mode"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}/ready", timeout=5)
            if response.status_code == 200 and (workers == 1 or len(loaded_workers(self.url)) >= workers):
                return response.json()
            time.sleep(0.2)
        raise AssertionError(f"server not ready ({workers} workers): {response.text}")

    def wait_logged(self) -> None:
        """:func:`wait_logged` for this server."""
        wait_logged(self.url)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a process manager does, and wait for the graceful shutdown."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_logged(url: str) -> None:
    """Until every prediction the server at ``url`` answered is in the log database (none pending in memory
    or in the spill), as a monitor round that reads the log needs it."""
    from tests.helpers import wait_for  # tests.helpers imports tests.conftest, which imports this module

    def pending() -> int:
        return int(httpx.get(f"{url}/ready", timeout=10).json()["prediction_log"]["pending_rows"])

    assert wait_for(lambda: pending() == 0), f"the log still has {pending()} rows pending"


def loaded_workers(url: str) -> set[str]:
    """The pids of the workers that have loaded the production model (housing_model_info at 1, one series per
    pid in Prometheus multiprocess mode)."""
    return set(
        re.findall(
            r'housing_model_info\{alias="production",[^}]*pid="(\d+)"[^}]*\} 1\.0',
            httpx.get(f"{url}/metrics", timeout=10).text,
        )
    )


def server_env(base_env: dict[str, str], **extra: str) -> dict[str, str]:
    """Environment of a test server: ``base_env`` with ``extra`` on top, the project importable, and the
    known feedback token :data:`FEEDBACK_TOKEN` unless one is set (simulate_traffic.py reads it from there
    too).
    """
    env = dict(base_env)
    env.update(extra)
    env.setdefault("HOUSING_FEEDBACK_TOKEN", FEEDBACK_TOKEN)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH", "")]))
    return env


@dataclass(frozen=True)
class Answer:
    """What one client request of a :class:`LoadGenerator` got: the HTTP status (0 when no response arrived),
    the model version of a 200, the rows sent, and ``error``: why the request failed on the client side (a
    connection refused or reset, a timeout, a 200 without a readable body), else None."""

    status: int
    version: str | None
    rows: int
    error: str | None = None

    @property
    def failed(self) -> bool:
        """Anything but a 200 with a readable body is a failed request."""
        return self.status != 200 or self.error is not None


class LoadGenerator:
    """Client threads that keep POSTing /predict (single rows, every Nth request a small batch) until stopped,
    one request in flight per thread, recording an :class:`Answer` for each request in the order they
    complete.

    A request that fails on the client side (connection refused or reset, timeout, unreadable body) is
    recorded as a failure (status 0 with the error) and the thread goes on after a short pause: no thread
    dies, so :attr:`failures` holds every request that did not get a good answer."""

    ERROR_PAUSE = 0.05
    """Seconds a thread waits after a client error before its next request (no busy loop against a dead
    server)."""

    def __init__(
        self,
        url: str,
        single: dict,
        batch: list[dict],
        batch_every: tuple[int, ...] = (3, 5, 7),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url, self.single, self.batch, self.batch_every = url, single, batch, batch_every
        self.headers = headers
        self.results: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(every,)) for every in batch_every]

    @property
    def clients(self) -> int:
        """Client threads, so the most requests in flight at any moment."""
        return len(self._threads)

    def _send(self, batch_every: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = self.batch if n % batch_every == 0 else self.single
                self.results.append(self._post(http, body))
                if self.results[-1].error is not None:
                    self._stop.wait(self.ERROR_PAUSE)

    @staticmethod
    def _post(http: httpx.Client, body: dict | list[dict]) -> Answer:
        rows = len(body) if isinstance(body, list) else 1
        status = 0
        try:
            response = http.post("/predict", json=body)
            status = response.status_code
            return Answer(status, response.json()["model_version"] if status == 200 else None, rows)
        # every client-side failure is a recorded failure, never a dead thread
        except Exception as error:  # noqa: BLE001
            return Answer(status, None, rows, f"{type(error).__name__}: {error}")

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    @property
    def failures(self) -> list[Answer]:
        """Every request without a good answer: client errors (status 0) and non-200 statuses."""
        return [answer for answer in self.results if answer.failed]

    @property
    def statuses(self) -> list[int]:
        return [answer.status for answer in self.results]

    @property
    def versions(self) -> list[str | None]:
        """The model version of each answer in completion order (None for a failure)."""
        return [answer.version for answer in self.results]

    @property
    def rows(self) -> int:
        """Rows answered with a 200: what the server must have logged."""
        return sum(answer.rows for answer in self.results if not answer.failed)


def loop_candidates(folder: Path) -> Path:
    """The project's candidates file with every candidate's own fold count removed, so a retrain
    cross-validates with the ``cv_folds`` setting (2): the same models and parameters, fewer fold fits (their
    out-of-fold errors calibrate a slightly wider interval)."""
    import yaml

    candidates = yaml.safe_load((PROJECT_DIR / "housing" / "training" / "candidates.yaml").read_text())
    for spec in candidates.values():
        spec.pop("cv_folds", None)
    path = folder / "loop-candidates.yaml"
    path.write_text(yaml.safe_dump(candidates, sort_keys=False))
    return path


def start_loop_server(
    mutable_run: Any, tmp_path: Path, label: str, candidates: str, **extra: str
) -> tuple[dict[str, str], ApiServer]:
    """An API over the mutable registry with a private copy of its artifacts and a fresh prediction log, as
    the loop tests need it: reloads every second, decisions from 1,000 predictions, retrains limited to
    ``candidates`` (JSON) and cross-validated with the folds setting's 2 (:func:`loop_candidates`: these
    tests judge the loop, not the candidates); ``extra``: more environment variables. It starts from the
    pipeline run's own production version without a challenger, whatever earlier tests left (a version an
    earlier test retrained is not the original model, and its evaluation rows are recorded in that test's
    prediction log, not in this fresh one): ``production`` and ``staging`` name the version promote.py chose
    in the pipeline run."""
    from mlflow import MlflowClient  # mlflow costs ~2 s to import: only the loop tests need it here

    from housing.config.settings import Settings
    from housing.registry.production import reconcile_ledger
    from housing.store.locks import RETRAIN_LOCK, held_lock
    from housing.store.tables import opened_engine

    client = MlflowClient(mutable_run.tracking_uri)
    for alias in ("production", "staging"):
        client.set_registered_model_alias("CaliforniaHousing", alias, mutable_run.production_version)
    shutil.copytree(mutable_run.artifacts_dir, tmp_path / "artifacts")
    env = server_env(
        mutable_run.env,
        HOUSING_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
        HOUSING_PREDICTION_LOG_URL=mutable_run.backend.new_log_url(label),
        HOUSING_RELOAD_INTERVAL="1",
        HOUSING_SHARED_STATE_REFRESH_SECONDS="0.2",
        HOUSING_MONITOR_MIN_WINDOW="1000",
        HOUSING_CANDIDATES=candidates,
        HOUSING_CANDIDATES_PATH=str(loop_candidates(tmp_path)),
        **extra,
    )
    settings = Settings(
        tracking_uri=mutable_run.tracking_uri,
        artifacts_dir=tmp_path / "artifacts",
        prediction_log_url=env["HOUSING_PREDICTION_LOG_URL"],
    )
    with (
        opened_engine(settings.log_database_url) as engine,
        held_lock(engine, RETRAIN_LOCK, lease_seconds=60),
    ):  # the aliases just set by hand, recorded where they were found: the rounds' ledger starts in agreement
        reconcile_ledger(client, settings, engine, "tests/server.py")
    server = ApiServer(env, tmp_path / "server.log").start()
    server.wait_ready()
    return env, server
