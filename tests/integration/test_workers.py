"""Several uvicorn workers: Prometheus counts every answer across them, and a kill -9 mid-load loses only the
rows of the last flush."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from housing.store.log_reads import count_rows
from housing.store.prediction_log import PredictionLog
from housing.store.tables import make_engine, prediction_rows
from tests.helpers import held_out_rows, wait_for
from tests.server import ApiServer, loaded_workers, server_env

NAME = "CaliforniaHousing"


FLUSH_INTERVAL = 0.5
"""HOUSING_LOG_FLUSH_INTERVAL of the server: long enough that each worker's buffer holds hundreds of rows at
the kill."""


LOAD_CLIENTS, LOAD_BATCH_ROWS, KILL_AFTER_ROWS, BURST_ROWS = 4, 10, 2_000, 500
"""Four clients sending 10 rows a request: 2,000 rows, a pause until the log has them all, then a burst of
500 rows (within one flush interval) and the kill."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    exposition = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples carrying ``labels``."""
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and set(labels.items()) <= set(found)
    )


def predict_requests_per_worker(folder: Path) -> dict[str, float]:
    """pid -> POST /predict 200s counted by that worker, read from its own file of the multiprocess folder."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        samples = [
            s
            for metric in multiprocess.MultiProcessCollector.merge([str(path)], accumulate=False)
            for s in metric.samples
            if s.name == "housing_http_requests_total"
            and s.labels.get("route") == "/predict"
            and s.labels.get("status") == "200"
        ]
        counts[path.stem.rsplit("_", 1)[1]] = sum(s.value for s in samples)
    return counts


class Answers:
    """What the clients received: every 200's request ids and predictions with the phase of the test it
    arrived in, and every request that got no 200 (a status, or a connection error) with its phase. Phases,
    not times: which rows were answered before the log was seen flushed, which after."""

    def __init__(self) -> None:
        self.phase = "counted"
        self.answered: list[tuple[str, list[str], list[float]]] = []
        self.failures: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def post(self, http: httpx.Client, body: Any) -> bool:
        """POST /predict and record the outcome; False once the server is gone or the clients are told to
        stop."""
        if self.stopped.is_set():
            return False
        phase = self.phase
        try:
            response = http.post("/predict", json=body)
        except httpx.HTTPError as error:
            with self.lock:
                self.failures.append((phase, type(error).__name__))
            return False
        with self.lock:
            if response.status_code != 200:
                self.failures.append((phase, f"HTTP {response.status_code}"))
                return True
            predictions = response.json()["predictions"] if isinstance(body, list) else [response.json()]
            self.answered.append(
                (phase, [p["request_id"] for p in predictions], [p["MedHouseVal"] for p in predictions])
            )
        return True

    @property
    def rows(self) -> int:
        return sum(len(ids) for _, ids, _ in self.answered)

    def ids(self, *phases: str) -> set[str]:
        return {request_id for phase, ids, _ in self.answered if phase in phases for request_id in ids}

    def values(self) -> list[float]:
        return [value for _, _, values in self.answered for value in values]


def in_threads(count: int, target: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def kill_9_all(server: ApiServer) -> None:
    """SIGKILL the uvicorn supervisor and every worker, as a crash of the host's processes would."""
    assert server.process is not None
    processes = [
        psutil.Process(server.process.pid),
        *psutil.Process(server.process.pid).children(recursive=True),
    ]
    for process in processes:  # the supervisor first: it must not start replacements
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)


def assert_prometheus_adds_up(url: str, folder: Path, answers: Answers, requests: int) -> None:
    """/metrics sums both workers' counters and histograms to what the clients received; each worker served
    some."""
    per_worker = predict_requests_per_worker(folder)
    assert len(per_worker) == 2 and min(per_worker.values()) > 0 and sum(per_worker.values()) == requests, (
        per_worker
    )
    samples, values = scrape(url), answers.values()
    assert total(samples, "housing_http_requests_total", route="/predict", status="200") == requests
    assert (
        total(samples, "housing_http_request_duration_seconds_count", route="/predict", status="200")
        == requests
    )
    for name, labels in (
        ("housing_predictions_total", {}),
        ("housing_answered_rows_total", {"alias": "production"}),
        ("housing_prediction_value_count", {}),
        ("housing_prediction_value_bucket", {"le": "+Inf"}),
    ):
        assert total(samples, name, **labels) == len(values), name
    assert total(samples, "housing_prediction_value_sum") == pytest.approx(sum(values), rel=1e-9)
    assert total(samples, "housing_prediction_value_bucket", le="2.0") == sum(
        value <= 2.0 for value in values
    )


def logged_ids(log_url: str) -> tuple[set[str], int]:
    """The request ids in the log and its row count; on SQLite the file passes its integrity check first."""
    engine = make_engine(log_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                assert connection.exec_driver_sql("PRAGMA integrity_check").scalars().all() == ["ok"]
            logged = set(connection.execute(text("select request_id from predictions")).scalars())
            rows = connection.execute(text("select count(*) from predictions")).scalar_one()
    finally:
        engine.dispose()
    return logged, rows


def assert_the_log_survived(log_url: str, answers: Answers, rows_in_flight: int) -> None:
    """The log is intact, holds one row per id, every row answered before the writers were seen to have
    flushed everything, nothing but rows of requests in flight beyond what was answered, and takes new rows
    after the crash. Only rows answered after that point (the last flush interval) may be missing."""
    logged, rows = logged_ids(log_url)
    flushed, late = answers.ids("counted", "load"), answers.ids("burst")
    lost = (flushed | late) - logged
    print(
        f"kill -9 of both workers: {len(flushed | late)} rows answered 200, {len(logged)} logged, "
        f"{len(lost)} lost, all of them answered after the last complete flush"
    )
    assert rows == len(logged)
    assert len(logged - flushed - late) <= rows_in_flight  # logged unanswered: only requests in flight
    assert flushed <= logged, f"{len(flushed - logged)} rows lost that the writers had flushed"
    assert lost <= late
    reopened = PredictionLog(log_url)
    reopened.append(
        prediction_rows(
            [uuid.uuid4().hex for _ in range(3)],
            np.full((3, 8), 2.0),
            [2.0] * 3,
            model_name=NAME,
            model_version="1",
            latency_ms=1.0,
            created_at=reopened.timestamp(datetime.now(UTC)),
        )
    )
    assert reopened.flush() and count_rows(log_url)[0] == rows + 3
    reopened.close()


def test_two_workers_count_every_answer_and_a_kill_9_mid_load_loses_only_the_last_flush(
    pipeline_run, tmp_path
):
    """One real ``uvicorn --workers 2`` (Prometheus multiprocess mode, one log), counted against the clients:
    (1) 40 single rows and 8 batches of 100 on new connections: /metrics adds both workers' counters and
    histograms up to exactly what the clients received; (2) four clients load it until /metrics shows no row
    pending in either worker, then send more, and the supervisor and both workers get SIGKILL mid-load: every
    row answered before that point is in the log, the log is intact, only later rows may be missing.
    """
    folder, log_url = tmp_path / "prometheus", pipeline_run.backend.new_log_url("workers")
    folder.mkdir()
    env = server_env(
        pipeline_run.env,
        HOUSING_PREDICTION_LOG_URL=log_url,
        HOUSING_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
        HOUSING_LOG_FLUSH_INTERVAL=str(FLUSH_INTERVAL),
        PROMETHEUS_MULTIPROC_DIR=str(folder),
    )
    rows = held_out_rows(pipeline_run, 100).to_dict(orient="records")
    bodies: list[Any] = [*rows[:40], *[rows] * 8]
    answers = Answers()

    def counted(i: int) -> None:
        for body in bodies[i::4]:
            with httpx.Client(base_url=server.url, timeout=30) as http:  # a new connection: either worker
                answers.post(http, body)

    def load(_: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while answers.post(http, rows[:LOAD_BATCH_ROWS]):
                pass

    server = ApiServer(env, tmp_path / "server.log", extra_args=("--workers", "2")).start()
    loaders: list[threading.Thread] = []
    try:
        assert len(wait_for(lambda: len(loaded_workers(server.url)) == 2 and loaded_workers(server.url))) == 2
        for thread in in_threads(4, counted):
            thread.join(120)
        assert answers.rows == 40 + 8 * 100 and not answers.failures, answers.failures
        assert_prometheus_adds_up(server.url, folder, answers, len(bodies))

        answers.phase = "load"
        loaders = in_threads(LOAD_CLIENTS, load)
        wait_for(lambda: answers.failures or answers.rows >= KILL_AFTER_ROWS)
        answers.stopped.set()  # the clients pause: the writers catch up
        for thread in loaders:
            thread.join(60)
        assert wait_for(lambda: pending_rows(server.url) == 0 and written_rows(server.url) == answers.rows)
        answers.phase, answers.stopped = "burst", threading.Event()
        loaders = in_threads(LOAD_CLIENTS, load)
        wait_for(lambda: answers.failures or len(answers.ids("burst")) >= BURST_ROWS, every=0.005)
        kill_9_all(server)  # requests in flight, rows in both buffers, maybe a flush running
    finally:
        server.stop()
    for thread in loaders:
        thread.join(60)
    assert not [failure for failure in answers.failures if failure[0] != "burst"], answers.failures
    assert_the_log_survived(log_url, answers, rows_in_flight=LOAD_CLIENTS * LOAD_BATCH_ROWS)


def pending_rows(url: str) -> float:
    """Rows answered and not yet written, summed over the workers."""
    return total(scrape(url), "housing_prediction_log_pending_rows")


def written_rows(url: str) -> float:
    """Rows the workers have written to the log."""
    return total(scrape(url), "housing_prediction_log_rows_total")
