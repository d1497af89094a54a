"""Several uvicorn workers: Prometheus counts every answer across them, and a kill -9 mid-load loses only the
rows of the last flush."""

from __future__ import annotations

import re
import signal
import threading
import time
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
from housing.store.prediction_log import PredictionLog, prediction_rows
from housing.store.tables import make_engine
from tests.helpers import held_out_rows
from tests.server import ApiServer, server_env

NAME = "CaliforniaHousing"


SQLITE = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""The promise does not depend on the tracking backend: the SQLite pipeline run only."""


def wait_for(condition: Callable[[], Any], timeout: float = 60, every: float = 0.2) -> Any:
    """``condition()``'s first truthy value, polled until ``timeout`` (then the last value)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(every)
    return value


FLUSH_INTERVAL = 0.5
"""HOUSING_LOG_FLUSH_INTERVAL of the server: long enough that each worker's buffer holds hundreds of rows at
the kill."""


LOSS_WINDOW = 2 * FLUSH_INTERVAL
"""A row answered longer ago than this before the kill must be in the log: the last flush interval, plus as
long again for the flush in flight when the process died (its transaction dies with it)."""


LOAD_CLIENTS, LOAD_BATCH_ROWS, LOAD_PAUSE, KILL_AFTER_ROWS = 4, 10, 0.02, 4_000
"""Four clients, each sending 10 rows every 20 ms or so (about 2,000 rows a second in all), killed past 4,000
rows."""

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


def loaded_workers(url: str) -> set[str]:
    """The pids of the workers that have loaded the production model (housing_model_info at 1, one series per
    pid)."""
    return set(
        re.findall(
            r'housing_model_info\{alias="production",[^}]*pid="(\d+)"[^}]*\} 1\.0',
            httpx.get(f"{url}/metrics", timeout=10).text,
        )
    )


class Answers:
    """What the clients received: every 200's request ids and predictions with the time it arrived, and every
    request that got no 200 (a status, or a connection error) with its time."""

    def __init__(self) -> None:
        self.answered: list[tuple[float, list[str], list[float]]] = []
        self.failures: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def post(self, http: httpx.Client, body: Any) -> bool:
        """POST /predict and record the outcome; False once the server is gone."""
        try:
            response = http.post("/predict", json=body)
        except httpx.HTTPError as error:
            with self.lock:
                self.failures.append((time.monotonic(), type(error).__name__))
            return False
        arrived = time.monotonic()
        with self.lock:
            if response.status_code != 200:
                self.failures.append((arrived, f"HTTP {response.status_code}"))
                return True
            predictions = response.json()["predictions"] if isinstance(body, list) else [response.json()]
            self.answered.append(
                (arrived, [p["request_id"] for p in predictions], [p["MedHouseVal"] for p in predictions])
            )
        return True

    @property
    def rows(self) -> int:
        return sum(len(ids) for _, ids, _ in self.answered)

    def values(self) -> list[float]:
        return [value for _, _, values in self.answered for value in values]


def in_threads(count: int, target: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def kill_9_all(server: ApiServer) -> float:
    """SIGKILL the uvicorn supervisor and every worker, as a crash of the host's processes would; the moment
    it began."""
    assert server.process is not None
    processes = [
        psutil.Process(server.process.pid),
        *psutil.Process(server.process.pid).children(recursive=True),
    ]
    killed_at = time.monotonic()
    for process in processes:  # the supervisor first: it must not start replacements
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)
    return killed_at


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


def assert_the_log_survived(log_url: str, answers: Answers, killed_at: float, rows_in_flight: int) -> None:
    """The SQLite log passes its integrity check, holds one row per id, every row answered before the loss
    window, nothing but rows of requests in flight beyond what was answered, and takes new rows after the
    crash."""
    engine = make_engine(log_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalars().all() == ["ok"]
            logged = set(connection.execute(text("select request_id from predictions")).scalars())
            rows = connection.execute(text("select count(*) from predictions")).scalar_one()
    finally:
        engine.dispose()
    answered_at = {request_id: arrived for arrived, ids, _ in answers.answered for request_id in ids}
    lost = sorted(killed_at - answered_at[request_id] for request_id in answered_at.keys() - logged)
    print(
        f"kill -9 of both workers: {len(answered_at)} rows answered 200, {len(logged)} logged, {len(lost)}"
        f" lost, the oldest answered {max(lost, default=0):.3f} s before the kill (allowed: {LOSS_WINDOW} s)"
    )
    assert rows == len(logged)
    assert (
        len(logged - answered_at.keys()) <= rows_in_flight
    )  # logged unanswered: only rows of requests in flight at the kill
    assert not lost or lost[-1] <= LOSS_WINDOW, lost[-5:]
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


@SQLITE
def test_two_workers_count_every_answer_and_a_kill_9_mid_load_loses_only_the_last_flush(
    pipeline_run, tmp_path
):
    """One real ``uvicorn --workers 2`` (Prometheus multiprocess mode, one SQLite log), counted against the
    clients: (1) 40 single rows and 8 batches of 100 on new connections: /metrics adds both workers' counters
    and histograms up to exactly what the clients received; (2) four clients load it, then the supervisor and
    both workers get SIGKILL mid-load: only rows answered within the last flush (and the flush in flight) are
    missing, the log is intact.
    """
    folder, log_url = tmp_path / "prometheus", f"sqlite:///{tmp_path / 'log.db'}"
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
            with httpx.Client(
                base_url=server.url, timeout=30
            ) as http:  # a new connection each: either worker takes it
                answers.post(http, body)

    def load(_: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while answers.post(http, rows[:LOAD_BATCH_ROWS]):
                time.sleep(LOAD_PAUSE)

    server = ApiServer(env, tmp_path / "server.log", extra_args=("--workers", "2")).start()
    try:
        assert (
            len(
                wait_for(
                    lambda: len(loaded_workers(server.url)) == 2 and loaded_workers(server.url),
                    timeout=120,
                    every=0.5,
                )
            )
            == 2
        )
        for thread in in_threads(4, counted):
            thread.join(120)
        assert answers.rows == 40 + 8 * 100 and not answers.failures, answers.failures
        assert_prometheus_adds_up(server.url, folder, answers, len(bodies))

        started = time.monotonic()
        loaders = in_threads(LOAD_CLIENTS, load)
        wait_for(
            lambda: (
                answers.failures
                or (answers.rows >= KILL_AFTER_ROWS and time.monotonic() - started > 4 * FLUSH_INTERVAL)
            ),
            timeout=120,
            every=0.02,
        )
        killed_at = kill_9_all(server)  # requests in flight, rows in both buffers, maybe a flush running
    finally:
        server.stop()
    for thread in loaders:
        thread.join(60)
    assert not [failure for failure in answers.failures if failure[0] < killed_at], answers.failures
    assert_the_log_survived(log_url, answers, killed_at, rows_in_flight=LOAD_CLIENTS * LOAD_BATCH_ROWS)
