"""Helpers more than one test module uses (test modules never import from each other)."""

from __future__ import annotations

import contextlib
import io
import logging
import runpy
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from housing.data.artifacts import load_pickle
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES, TARGET
from housing.serving.model_service import LoadedModel
from housing.serving.prometheus import Metrics
from housing.serving.shadow import ServedBatch, ShadowScorer
from housing.store.locks import create_lock_table, locks_table
from housing.store.log_reads import count_rows, read_window
from housing.store.prediction_log import FeedbackResult, PredictionLog
from housing.store.tables import create_tables, prediction_rows
from tests.conftest import DATA_SOURCE, PROJECT_DIR


def tiny_dataset(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame([EXAMPLE_REQUEST] * rows)
    frame["MedInc"] = rng.uniform(1, 10, rows)
    frame[TARGET.name] = rng.uniform(0.5, 5, rows)
    return frame


def race_for_locks(targets: list[tuple[str, str]], racers: int, work_dir: Path) -> list[dict[str, str]]:
    """``racers`` processes try at the same moment to take each (database URL, lock name) of ``targets``;
    per target, each process's answer ("won" or "lost") by owner."""
    work_dir.mkdir(parents=True, exist_ok=True)
    arguments = [part for target in targets for part in target]
    processes = {
        f"racer-{index}": subprocess.Popen(
            [sys.executable, "-c", RACER, str(work_dir), str(index), *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(racers)
    }
    deadline = time.monotonic() + 60
    while len(list(work_dir.glob("ready-*"))) < racers:
        assert time.monotonic() < deadline, "the racing processes did not start"
        assert all(process.poll() is None for process in processes.values()), (
            "a racing process died before the race"
        )
        time.sleep(0.01)
    (work_dir / "go").touch()
    answers: list[dict[str, str]] = [{} for _ in targets]
    for owner, process in processes.items():
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        for target_answers, answer in zip(answers, stdout.split(), strict=True):
            target_answers[owner] = answer
    return answers


def the_winner(answers: dict[str, str]) -> str:
    """The one owner that won a race (fails unless exactly one did)."""
    winners = [owner for owner, answer in answers.items() if answer == "won"]
    assert len(winners) == 1 and set(answers.values()) == {"won", "lost"}, answers
    return winners[0]


def expired_lease(engine: Engine, name: str, owner: str) -> None:
    """A lease of ``name`` by ``owner`` that expired a minute ago (a holder that died)."""
    create_lock_table(engine)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            insert(locks_table).values(
                name=name,
                owner=owner,
                acquired_at=now - timedelta(hours=2),
                expires_at=now - timedelta(minutes=1),
            )
        )


def check_a_batch_retried_after_an_unclear_failure_is_stored_once(
    log_url: str, spill_dir: Path | None
) -> None:
    """The database commits a batch but the writer never hears back (the connection drops after COMMIT): it
    must retry the batch, from memory or from the spill, and the retry must skip every row already stored."""
    log = PredictionLog(
        log_url, flush_interval=0.01, max_buffer_rows=None if spill_dir is None else 10, spill_dir=spill_dir
    )
    try:
        create_tables(log.engine)
        insert, inserted = log._insert_rows, []

        def commit_then_lose_the_answer(rows):
            insert(rows)
            inserted.append([row[0] for row in rows])
            if len(inserted) == 1:
                raise OperationalError(
                    "COMMIT", {}, ConnectionResetError("server closed the connection unexpectedly")
                )

        log._insert_rows = commit_then_lose_the_answer  # type: ignore[method-assign]
        log.append(rows_for(log, ["a", "b", "c"]))
        assert (
            log.flush() is False and log.pending_rows == 3
        )  # the writer cannot know the rows are stored: it keeps them
        log.append(rows_for(log, ["d"], minutes=1))
        assert log.flush() is True
        assert inserted[0] == ["a", "b", "c"] and {"a", "b", "c"} <= {
            rid for batch in inserted[1:] for rid in batch
        }  # really retried
        assert count_rows(log_url) == (4, 0) and log.pending_rows == 0
        assert sorted(read_window(log.engine)["request_id"]) == ["a", "b", "c", "d"]
    finally:
        log.close(timeout=0)


def check_two_conflicting_labels_at_once_store_the_first_and_refuse_the_other(log_url: str) -> None:
    """Two different labels for one prediction, both looking for a stored label before either inserts (the
    race, every time): one is CREATED, the other a CONFLICT, and the stored label is the CREATED one."""
    log = PredictionLog(log_url, flush_interval=0.01)
    try:
        log.append(rows_for(log, ["a", "b", "c"]))
        assert log.flush()
        lookup = log._stored_label
        for request_id in ("a", "b", "c"):
            together, looked = threading.Barrier(2), set[int]()

            def look_together(
                rid: str, together: threading.Barrier = together, looked: set[int] = looked
            ) -> float | None:
                stored = lookup(rid)
                if threading.get_ident() not in looked:  # the first look of each thread: wait for the other's
                    looked.add(threading.get_ident())
                    together.wait(10)
                return stored

            log._stored_label = look_together  # type: ignore[method-assign,assignment]
            outcomes: dict[float, str] = {}

            def label(value: float, rid: str = request_id, outcomes: dict[float, str] = outcomes) -> None:
                outcomes[value] = log.record_feedback(rid, value)

            threads = [threading.Thread(target=label, args=(value,)) for value in (2.5, 3.75)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert sorted(outcomes.values()) == [FeedbackResult.CONFLICT, FeedbackResult.CREATED], outcomes
            [created] = [value for value, outcome in outcomes.items() if outcome == FeedbackResult.CREATED]
            assert lookup(request_id) == created
        assert count_rows(log_url) == (3, 3)
    finally:
        log.close(timeout=0)


class DataServer:
    """A local http.server thread: ``/data.csv`` is the real CSV, ``/endless`` streams bytes until the client
    hangs up, ``/to-file`` redirects to ``file:///etc/passwd``; every request's path and Authorization header
    is recorded in :attr:`requests`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append((self.path, self.headers.get("Authorization")))
                route = self.path.split("?", 1)[0]
                if route == "/data.csv":
                    body = DATA_SOURCE.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif route == "/endless":
                    self.send_response(200)
                    self.end_headers()  # no Content-Length: the body ends when the connection does
                    with contextlib.suppress(OSError):
                        while True:
                            self.wfile.write(b"MedInc,HouseAge\n" + b"1.0,2.0\n" * 8192)
                elif route == "/to-file":
                    self.send_response(302)
                    self.send_header("Location", f"file://{PASSWD}")
                    self.end_headers()
                else:
                    self.send_error(404)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> DataServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


RACER = """
import sys, time
from pathlib import Path
from housing.store.locks import acquire_lock
from housing.store.tables import make_engine
ready_dir, index, targets = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
engines = [(make_engine(url), name) for url, name in zip(targets[::2], targets[1::2])]
(ready_dir / f"ready-{index}").touch()
while not (ready_dir / "go").exists():
    time.sleep(0.005)
for engine, name in engines:
    print("won" if acquire_lock(engine, name, owner=f"racer-{index}", lease_seconds=60) else "lost")
"""


def rows_for(
    log: PredictionLog, request_ids: list[str], *, minutes: int = 0, prediction: float = 2.0
) -> list[tuple[Any, ...]]:
    """Log rows for ``request_ids``, logged ``minutes`` after START; MedInc numbers the rows 1, 2, 3..."""
    features = np.array([[EXAMPLE_REQUEST[name] for name in FEATURE_NAMES]] * len(request_ids))
    features[:, FEATURE_NAMES.index("MedInc")] = np.arange(1, len(request_ids) + 1)
    return prediction_rows(
        request_ids,
        features,
        [prediction] * len(request_ids),
        model_name="CaliforniaHousing",
        model_version="3",
        latency_ms=1.5,
        created_at=log.timestamp(START + timedelta(minutes=minutes)),
    )


PASSWD = Path("/etc/passwd")


START = datetime(2024, 1, 1, tzinfo=UTC)


def stub_model(
    version: str, predict: Callable[[np.ndarray], np.ndarray], alias: str = "production"
) -> LoadedModel:
    """A loaded model whose predict is ``predict`` (the compiled-path slot: no scikit-learn pipeline
    needed)."""
    return LoadedModel(
        pipeline=None,
        name="M",
        version=version,
        alias=alias,
        run_id=None,
        metrics={},
        loaded_at=datetime.now(UTC),
        fast_predict=predict,
    )


def numbered_districts(count: int, start: int = 1) -> np.ndarray:
    """``count`` different districts: MedInc numbers them."""
    rows = np.array([[EXAMPLE_REQUEST[name] for name in FEATURE_NAMES]] * count, dtype=np.float64)
    rows[:, 0] = np.arange(start, start + count) / 10
    return rows


CHAMPION = stub_model("3", lambda x: x[:, 0] * 2)


CHALLENGER = stub_model("7", lambda x: x[:, 0] * 3, alias="staging")


def served_batch(log: PredictionLog, ids: list[str], by: LoadedModel, start: int = 1) -> ServedBatch:
    x = numbered_districts(len(ids), start)
    return ServedBatch(ids, x, by.predict(x).tolist(), by, by.alias, 1.0, log.timestamp(datetime.now(UTC)))


def shadow_scorer(
    log: PredictionLog, other: Callable[[str], LoadedModel | None], **kwargs: Any
) -> tuple[ShadowScorer, Metrics]:
    metrics = Metrics()
    return ShadowScorer(log, metrics, other, **kwargs), metrics


def record_label(log: PredictionLog, request_id: str, actual: float) -> None:
    assert log.record_feedback(request_id, actual) == "created"


def copy_store(pipeline_run: Any, tmp_path: Path) -> str:
    """A consistent copy of the pipeline run's SQLite tracking store (SQLite's backup API); its tracking URI.
    The models stay where the run logged them and are only read."""
    source, copy = (
        sqlite3.connect(pipeline_run.work_dir / "mlflow.db"),
        sqlite3.connect(tmp_path / "mlflow.db"),
    )
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def held_out_rows(pipeline_run: Any, rows: int) -> pd.DataFrame:
    """The first ``rows`` rows of the pipeline run's test split, the 8 features in contract order."""
    return (
        load_pickle(pipeline_run.artifacts_dir / "split" / "X_test.pkl")
        .loc[:, list(FEATURE_NAMES)]
        .iloc[:rows]
    )


def wait_for(condition: Callable[[], Any], timeout: float = 60, every: float = 0.1) -> Any:
    """``condition()``'s first truthy value, polled until it comes; the deadline only ends a wait that would
    otherwise hang (the last value is returned then, for the caller's assertion to report)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(every)
    return value


def finishes(call: Callable[[], Any]) -> Any:
    """``call()``'s result (or its exception), failing the test instead of hanging the suite if it never
    returns (a hang guard of 60 s, far beyond the timeouts under test: not a speed bound).
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as error:  # noqa: BLE001 - re-raised on the test's thread
            outcome.append((False, error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert outcome, "the call hung on a database that never answers"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def run_script(script: str, *args: str, patch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """``python <script> <args>`` in this process (``script``: a path under the project, a stage or a
    module such as ``housing/store/labellers.py``): (exit code, stdout, stderr). The root logger's handlers
    and level, which the script's logging set-up changes, are put back."""
    out, err = io.StringIO(), io.StringIO()
    patch.setattr(sys, "argv", [script, *args])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            pytest.raises(SystemExit) as exited,
        ):
            runpy.run_path(str(PROJECT_DIR / script), run_name="__main__")
    finally:
        root.handlers, root.level = handlers, level
    return exited.value.code, out.getvalue(), err.getvalue()


def assert_refused(result: tuple[Any, str, str], sentence: str) -> None:
    """``result`` (:func:`run_script`'s) is a refusal as the project's commands refuse bad input: exit code 2,
    nothing on stdout, one line on stderr that starts with "error: " and holds ``sentence``."""
    code, out, err = result
    assert code == 2 and out == "", (out, err)
    assert err.startswith("error: ") and sentence in err and len(err.strip().splitlines()) == 1, err
