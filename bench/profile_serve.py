"""Where a serving process spends its time under the serving benchmark's load, by part of the request path.

Starts this API (one worker, SQLite log, the flags of `make serve`) on the registry's production model, loads
it with bench/serve.py's wrk client script (real held-out districts, single rows) and samples the worker with
py-spy (on-CPU samples of every thread, 250 a second, without pausing it) for the run's length; then once more
with a challenger in shadow. Each sample is put in the first part of the path its stack reaches, looking from
the innermost frame out:

    predict    the model: compiled kernels, the library's predict, the micro-batcher's model call
    shadow     the shadow scorer's thread (its own predict calls included)
    log        the prediction log: buffering rows, the writer thread, the spill
    metrics    Prometheus counters and histograms
    validate   checking a row against the feature contract
    parse      JSON decoding and encoding of bodies
    limits     body size and time, the JSON scan, query strings, rate limits, tokens
    handler    the rest of the predict handler (ids, routing, responses)
    framework  uvicorn, httptools, uvloop, asyncio, Starlette and FastAPI

and prints each part's share of the samples, per run, so the next change is chosen from evidence. Needs
`make pipeline`, wrk and root (py-spy reads another process's memory).

    python -m bench.profile_serve [--duration 15] [--challenger gradient_boosting]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.serve import (
    held_out_feed,
    run_wrk,
    set_challenger,
    start,
    stop,
    wait_for,
    write_wrk_script,
)
from housing.api.main import SERVER_FLAGS
from housing.config.settings import get_settings
from tests.server import free_port

PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shadow", ("housing/serving/shadow.py",)),
    (
        "predict",
        (
            "housing/serving/compiled.py",
            "housing/serving/trees.py",
            "housing/serving/sklearn_trees.py",
            "housing/training/features.py",
            "sklearn/",
            "lightgbm/",
            "numba/",
            "scipy/",
            "housing/serving/micro_batch.py",
        ),
    ),
    ("log", ("housing/store/",)),
    ("metrics", ("prometheus_client/", "housing/serving/prometheus.py")),
    ("validate", ("pydantic/", "pydantic_core/", "housing/api/schemas.py", "msgspec/")),
    ("parse", ("orjson", "json/")),
    (
        "limits",
        (
            "housing/api/json_scan.py",
            "housing/api/body_reading.py",
            "housing/api/query_params.py",
            "housing/api/rate_limits.py",
            "housing/api/credentials.py",
            "housing/store/disk_floor.py",
        ),
    ),
    ("handler", ("housing/api/",)),
    ("framework", ("uvicorn/", "httptools", "uvloop", "asyncio/", "starlette/", "fastapi/", "anyio/")),
)
"""Parts of the request path, each with the file paths of its frames (a function of the predict handler is
placed by its name, below)."""
HANDLER_FUNCTIONS = {
    "parse_json": "parse",
    "validate_row": "validate",
    "validate_batch": "validate",
    "features_of": "validate",
    "log_predictions": "log",
}
SAMPLE_RATE = 250


def part_of(stack: str) -> str:
    """The part of the path a collapsed py-spy stack (outermost frame first, ``;``-joined) belongs to."""
    frames = stack.split(";")
    if "housing/serving/shadow.py" in stack:  # the scorer's thread, its predict calls included
        return "shadow"
    for frame in reversed(frames):
        if "predict_handler.py" in frame:
            name = frame.split(" (", 1)[0].strip()
            if name in HANDLER_FUNCTIONS:
                return HANDLER_FUNCTIONS[name]
        for part, paths in PARTS:
            if any(path in frame for path in paths):
                return part
    return "other"


def profile_run(
    url: str, pid: int, script: Path, duration: int, connections: int, work_dir: Path, label: str
) -> tuple[collections.Counter[str], dict[str, float]]:
    """Load the server for ``duration`` seconds while py-spy samples ``pid``; the samples per part and wrk's
    figures."""
    raw = work_dir / f"{label}.txt"
    sampler = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(SAMPLE_RATE),
            "--duration",
            str(duration + 2),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    figures = run_wrk(url, script, duration, connections)
    sampler.wait()
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            counts[part_of(stack)] += int(count)
    return counts, figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="Seconds of load per run [default 15].")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections [default 16].")
    parser.add_argument("--rows", type=int, default=1_000, help="Held-out districts sent in turn.")
    parser.add_argument(
        "--challenger", default="gradient_boosting", help="The candidate in shadow for the second run."
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("py-spy reads the server's memory: run as root")
    settings = get_settings()
    feed = held_out_feed(settings, args.rows)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    script = write_wrk_script(work_dir, "api", feed.bodies())
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUSING_")}
    env.update(
        MLFLOW_TRACKING_URI=settings.tracking_uri,
        HOUSING_ARTIFACTS_DIR=str(settings.artifacts_dir),
        HOUSING_PREDICT_ROWS_PER_SECOND="1000000000",
    )
    results = {}
    for label in ("without a challenger", f"{args.challenger} in shadow"):
        restore = set_challenger(settings, args.challenger) if "shadow" in label else None
        port = free_port()
        log_url = f"sqlite:///{work_dir / f'log-{port}.db'}"
        uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log", *SERVER_FLAGS]
        server = start(
            [*uvicorn, "--port", str(port), "app:app"],
            {**env, "HOUSING_PREDICTION_LOG_URL": log_url},
            work_dir / f"server-{port}.log",
        )
        try:
            wait_for(f"http://127.0.0.1:{port}/ready", server)
            results[label] = profile_run(
                f"http://127.0.0.1:{port}/predict",
                server.pid,
                script,
                args.duration,
                args.connections,
                work_dir,
                label.replace(" ", "-"),
            )
        finally:
            stop(server)
            if restore is not None:
                restore()
    print(
        f"# bench/profile_serve.py: {os.cpu_count()} CPUs, wrk -t1 -c{args.connections} -d{args.duration}s,"
        f" single rows ({feed.description}); py-spy {SAMPLE_RATE} samples/s of every thread, on CPU only"
    )
    labels = list(results)
    print(f"{'part':<10}" + "".join(f" {label:>34}" for label in labels))
    totals = {label: sum(counts.values()) or 1 for label, (counts, _) in results.items()}
    for part in [*(name for name, _ in PARTS), "other"]:
        print(
            f"{part:<10}"
            + "".join(f" {100 * results[label][0][part] / totals[label]:>33.1f}%" for label in labels)
        )
    print(f"{'samples':<10}" + "".join(f" {totals[label]:>34,}" for label in labels))
    print(f"{'rps':<10}" + "".join(f" {results[label][1]['rps']:>34,.0f}" for label in labels))
    print(f"{'p99 ms':<10}" + "".join(f" {results[label][1]['p99']:>34.2f}" for label in labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
