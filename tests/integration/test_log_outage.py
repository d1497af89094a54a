"""The prediction log through an outage of its database, on a real uvicorn server: memory stays bounded while
rows spill to disk, the log holds every row once the database is back, and a kill -9 in the middle of the
outage loses at most one flush interval's rows. The database refuses connections: for SQLite a file stands
where the database's folder should be; for PostgreSQL the database stops accepting connections."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from housing.data.artifacts import load_pickle
from housing.store.log_reads import count_rows
from tests.backends import Backend
from tests.helpers import wait_for
from tests.server import ApiServer, server_env

ROWS_PER_REQUEST, REQUESTS, CLIENTS = 100, 100, 4
"""10,000 predictions in batches of 100 from 4 client threads."""
BUFFER_CAP = 1_000
"""HOUSING_LOG_BUFFER_MAX_ROWS of the servers: a tenth of the rows, so the spill is exercised."""
FLUSH_INTERVAL = 0.2
MAX_RSS_BYTES = 768 * 2**20
"""The server's resident memory must stay under this during the outage (numba, LightGBM and MLflow take ~530
MB)."""
MAX_RSS_GROWTH_BYTES = 4 * 2**20
"""Growth allowed while the outage's 9,000 rows arrive (the spill keeps them on disk; a buffer holding them
all grows by about 4 MB)."""


class LogOutage:
    """A fresh prediction log database that can refuse connections and come back."""

    def __init__(self, backend: Backend, tmp_path: Path) -> None:
        self.backend = backend
        if backend.name == "sqlite":
            self.folder = tmp_path / "log-db"
            self.url = f"sqlite:///{self.folder / 'log.db'}"
        else:
            self.url = backend.new_log_url("outage")
            self.database = self.url.rsplit("/", 1)[1]

    def begin(self) -> None:
        """Refuse connections (for SQLite, before a server has opened the file: open files outlive a
        rename)."""
        if self.backend.name == "sqlite":
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.write_text("a file where the database's folder should be: SQLite cannot open log.db")
        else:
            self._admin(
                f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false',
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name",
            )

    def end(self) -> None:
        if self.backend.name == "sqlite":
            self.folder.unlink()  # the server creates the folder again on its next connection attempt
        else:
            self._admin(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')

    def _admin(self, *statements: str) -> None:
        assert self.backend.admin_url is not None
        admin = create_engine(self.backend.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                for statement in statements:
                    connection.execute(text(statement), {"name": self.database})
        finally:
            admin.dispose()

    def logged_rows(self) -> int | None:
        """Rows in the log, None while it cannot be read."""
        try:
            return count_rows(self.url)[0]
        except SQLAlchemyError:
            return None


class Clients:
    """``CLIENTS`` threads POSTing batches of ``ROWS_PER_REQUEST`` rows until ``requests`` are sent or
    :meth:`stop`; rows answered 200 are counted apart from rows sent (a request in flight at a kill -9 is
    sent, not answered). A connection error ends its thread and is recorded with its time in ``errors``: the
    tests decide whether it was allowed (only after a kill), so a client that dies is a failure, never a
    silent loss of load."""

    def __init__(self, url: str, batch: list[dict[str, Any]], requests: int) -> None:
        self.url, self.batch, self.left = url, batch, requests
        self.sent_rows = self.ok_rows = 0
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._send) for _ in range(CLIENTS)]

    def _take(self) -> bool:
        with self._lock:
            if self.left <= 0 or self._stopped.is_set():
                return False
            self.left -= 1
            self.sent_rows += len(self.batch)
            return True

    def _send(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while self._take():
                try:
                    status = http.post("/predict", json=self.batch).status_code
                except httpx.HTTPError as error:  # allowed only once the server was killed mid-request
                    with self._lock:
                        self.errors.append(f"{type(error).__name__}: {error}")
                    return
                with self._lock:
                    self.statuses.append(status)
                    self.ok_rows += len(self.batch) if status == 200 else 0

    def start(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self.join()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(120)


class RssSampler:
    """The largest resident set size of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stopped.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join()


def spill_lines(artifacts_dir: Path) -> int:
    return sum(
        path.read_bytes().count(b"\n")
        for path in (artifacts_dir / "prediction_log_spill").glob("prediction_log-*.jsonl")
    )


@pytest.fixture
def batch(pipeline_run) -> list[dict[str, Any]]:
    """``ROWS_PER_REQUEST`` held-out rows: one request's body."""
    return (
        load_pickle(pipeline_run.artifacts_dir / "split" / "X_test.pkl")
        .iloc[:ROWS_PER_REQUEST]
        .to_dict(orient="records")
    )


@pytest.fixture
def outage(pipeline_run, tmp_path) -> LogOutage:
    return LogOutage(pipeline_run.backend, tmp_path)


@pytest.fixture
def env(pipeline_run, outage, tmp_path) -> dict[str, str]:
    """The servers' environment: their own artifacts folder (the spill lives there), a small buffer cap."""
    return server_env(
        pipeline_run.env,
        HOUSING_PREDICTION_LOG_URL=outage.url,
        HOUSING_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
        HOUSING_LOG_BUFFER_MAX_ROWS=str(BUFFER_CAP),
        HOUSING_LOG_FLUSH_INTERVAL=str(FLUSH_INTERVAL),
    )


def test_an_outage_keeps_memory_bounded_and_loses_no_row(outage, env, batch, tmp_path):
    outage.begin()
    with ApiServer(env, tmp_path / "server.log") as server:
        server.wait_ready()
        assert server.process is not None
        warm_up = Clients(
            server.url, batch, REQUESTS // 10
        ).start()  # the first 2,000 rows: allocator and caches settle
        warm_up.join()
        with RssSampler(server.process.pid) as rss:
            baseline = rss.peak
            load = Clients(server.url, batch, REQUESTS - REQUESTS // 10).start()
            load.join()
        statuses = warm_up.statuses + load.statuses
        assert not warm_up.errors and not load.errors, warm_up.errors + load.errors
        assert len(statuses) == REQUESTS and set(statuses) == {200}
        ready = httpx.get(f"{server.url}/ready", timeout=10).json()["prediction_log"]
        assert ready["last_error"] and ready["pending_rows"] == REQUESTS * ROWS_PER_REQUEST
        assert (
            spill_lines(Path(env["HOUSING_ARTIFACTS_DIR"])) >= REQUESTS * ROWS_PER_REQUEST - BUFFER_CAP
        )  # on disk, not in memory
        outage.end()
        wait_for(lambda: outage.logged_rows() == REQUESTS * ROWS_PER_REQUEST)
        wait_for(
            lambda: httpx.get(f"{server.url}/ready", timeout=10).json()["prediction_log"]["pending_rows"] == 0
        )
    print(f"RSS: {baseline / 2**20:.0f} MB before the outage's 9,000 rows, peak {rss.peak / 2**20:.0f} MB")
    assert rss.peak < MAX_RSS_BYTES
    assert rss.peak - baseline < MAX_RSS_GROWTH_BYTES, f"RSS grew by {(rss.peak - baseline) / 2**20:.1f} MB"
    assert outage.logged_rows() == REQUESTS * ROWS_PER_REQUEST  # exactly: nothing lost, nothing twice
    assert spill_lines(Path(env["HOUSING_ARTIFACTS_DIR"])) == 0


def test_a_kill_9_during_an_outage_loses_only_rows_not_yet_on_disk(outage, env, batch, tmp_path):
    """During an outage every answered row reaches the spill file within a flush interval; a kill -9 then
    loses only the rows answered since (counted: the rows on disk before the kill all reach the log)."""
    outage.begin()
    artifacts = Path(env["HOUSING_ARTIFACTS_DIR"])
    server = ApiServer(env, tmp_path / "killed.log").start()
    try:
        server.wait_ready()
        before = Clients(server.url, batch, REQUESTS // 2).start()
        before.join()
        assert wait_for(lambda: spill_lines(artifacts) == before.ok_rows), "the rows did not reach the disk"
        burst = Clients(server.url, batch, REQUESTS // 2).start()
        wait_for(lambda: burst.ok_rows >= 2 * ROWS_PER_REQUEST, every=0.005)
        assert server.process is not None
        server.process.kill()  # SIGKILL, with requests in flight and rows in memory
        server.process.wait()
    finally:
        burst.stop()
        server.stop()
    assert not before.errors and set(before.statuses) == {200}
    assert set(burst.statuses) == {200}  # the only client errors: requests in flight at the kill
    outage.end()
    with ApiServer(env, tmp_path / "restarted.log") as restarted:
        restarted.wait_ready()
        assert wait_for(lambda: spill_lines(artifacts) == 0)  # the dead server's spill, replayed and deleted
        logged = outage.logged_rows()
    assert logged is not None
    print(f"kill -9: {before.ok_rows} rows on disk before, {burst.ok_rows} answered after, {logged} logged")
    assert before.ok_rows <= logged <= before.sent_rows + burst.sent_rows
