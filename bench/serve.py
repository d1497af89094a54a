"""Load the prediction API, `mlflow models serve` and a bare FastAPI endpoint the same way; print the figures.

All three serve over uvicorn on this machine in one run, one after the other, with the same registered
production model: (a) this API (`uvicorn app:app`, prediction logging on), (b) `mlflow models serve` for
models:/CaliforniaHousing@production, (c) bench/bare_app.py returning a constant. Each is loaded by wrk
(one client thread, 16 connections, single-row requests) and the script prints rps, p50, p99 and errors,
the ratios, a check that the prediction log holds exactly one row per prediction the API made, and the
end-to-end time of a 10,000-row batch request. (a2) repeats (a) with 2 worker processes logging to
PostgreSQL (the team setup), same load, same run. (a3) repeats (a) with a challenger in shadow: the `staging`
alias is pointed at the --challenger candidate's version for the run (and put back after), so every request is
also scored by it; it checks that every logged row carries the challenger's prediction.

Needs a production model in the registry (`make pipeline`) and wrk (`apt-get install wrk`).

    python bench/serve.py [--duration 20] [--connections 16] [--tracking-uri URI] [--challenger gradient_boosting]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
from mlflow import MlflowClient
from sqlalchemy import text

from housing.config import Settings, get_settings
from housing.data import read_source
from housing.prediction_log import count_rows, make_engine
from housing.schema import EXAMPLE_REQUEST
from localteam.services import Postgres, create_database, database_url

PROJECT_DIR = Path(__file__).resolve().parent.parent

ROW = ",".join(f'"{k}":{v}' for k, v in EXAMPLE_REQUEST.items())
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server for {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not become ready")


def run_wrk(url: str, body: str, duration: int, connections: int, work_dir: Path, script: Path | None = None) -> dict[str, float]:
    if script is None:
        script = work_dir / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=body))
    subprocess.run(["wrk", "-t1", "-c4", "-d2s", "-s", str(script), url], capture_output=True, check=True)  # warm-up
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    def found(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out)
        if match is None:
            raise SystemExit(f"unexpected wrk output (no {pattern!r}):\n{out}")
        return match

    def latency(label: str) -> float:
        value, unit = found(rf"{label}\s+([\d.]+)(us|ms|s)").groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(found(r"Requests/sec:\s+([\d.]+)").group(1)),
        "p50": latency("50%"),
        "p99": latency("99%"),
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
        "requests": int(found(r"(\d+) requests in").group(1)),
    }


def batch_request_ms(url: str, settings: object, repeats: int = 7) -> list[float]:
    """Seconds from sending a 10,000-row request (real rows, JSON ready) to having the whole response."""
    frame = read_source(os.environ.get("HOUSING_DATA_SOURCE") or str(PROJECT_DIR.parent / "shared/data/california_housing.csv"))
    rows = frame.drop(columns="MedHouseVal").sample(10_000, random_state=0).to_dict(orient="records")
    body = orjson.dumps(rows)
    timings = []
    with httpx.Client(timeout=60) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.post(url, content=body, headers={"content-type": "application/json"})
            content = response.content
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200 and len(orjson.loads(content)["predictions"]) == 10_000
    return timings


def postgres_log(admin_url: str | None, work_dir: Path) -> tuple[Postgres | None, str]:
    """A fresh PostgreSQL database for the prediction log: on --postgres-url, else on a private cluster."""
    cluster = None
    if admin_url is None:
        base = Path(tempfile.mkdtemp(prefix="bench-serve-pg-"))
        os.chmod(base, 0o755)
        cluster = Postgres(base / "pgdata", free_port()).start()
        admin_url = cluster.admin_url
    name = f"bench_log_{uuid.uuid4().hex[:8]}"
    create_database(admin_url, name)
    return cluster, database_url(admin_url, name)


def set_challenger(settings: Settings, candidate: str) -> Callable[[], None]:
    """Point staging at ``candidate``'s newest version; returns what puts staging back as it was."""
    client = MlflowClient(settings.tracking_uri)
    versions = [v for v in client.search_model_versions(f"name = '{settings.model_name}'") if v.tags.get("candidate") == candidate]
    if not versions:
        raise SystemExit(f"no registered version of candidate {candidate}")
    before = client.get_registered_model(settings.model_name).aliases.get(settings.staging_alias)
    client.set_registered_model_alias(settings.model_name, settings.staging_alias, str(max(int(v.version) for v in versions)))

    def restore() -> None:
        if before is None:
            client.delete_registered_model_alias(settings.model_name, settings.staging_alias)
        else:
            client.set_registered_model_alias(settings.model_name, settings.staging_alias, str(before))

    return restore


def shadow_rows(log_url: str) -> int:
    """Logged rows that carry a shadow prediction."""
    engine = make_engine(log_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("select count(*) from predictions where shadow_prediction is not null")).scalar_one())
    finally:
        engine.dispose()


def start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


WRK_ROWS_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
bodies = {{{bodies}}}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, bodies[(counter % #bodies) + 1])
end
"""


def real_bodies(count: int = 1_000) -> list[str]:
    """``count`` different single-row bodies: real districts of the dataset (a constant row flatters a server)."""
    frame = read_source(os.environ.get("HOUSING_DATA_SOURCE") or str(PROJECT_DIR.parent / "shared/data/california_housing.csv"))
    rows = frame.drop(columns="MedHouseVal").sample(count, random_state=1).to_dict(orient="records")
    return [orjson.dumps(row).decode() for row in rows]


def run_wrk_rows(url: str, bodies: list[str], duration: int, connections: int, work_dir: Path) -> dict[str, float]:
    """wrk cycling through ``bodies`` (one per request, in turn); the figures as :func:`run_wrk` gives them."""
    script = work_dir / "rows.lua"
    script.write_text(WRK_ROWS_SCRIPT.format(bodies=",".join(f"[[{body}]]" for body in bodies)))
    return run_wrk(url, "", duration, connections, work_dir, script=script)


def all_candidates(settings: Settings, args: argparse.Namespace) -> int:
    """Every registered candidate in production in turn, fed real districts; rps, p50, p99, errors, compiled."""
    client = MlflowClient(settings.tracking_uri)
    name = settings.model_name
    latest: dict[str, str] = {}
    for registered in client.search_model_versions(f"name = '{name}'"):
        candidate = registered.tags.get("candidate", "?")
        if int(registered.version) > int(latest.get(candidate, "0")):
            latest[candidate] = str(registered.version)
    before = dict(client.get_registered_model(name).aliases)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-serve-all-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUSING_")}
    env.update(MLFLOW_TRACKING_URI=settings.tracking_uri, HOUSING_ARTIFACTS_DIR=str(settings.artifacts_dir))
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log", "--http", "httptools"]
    bodies = real_bodies()
    rows: list[tuple[str, str, dict[str, float], str]] = []
    try:
        if settings.staging_alias in before:
            client.delete_registered_model_alias(name, settings.staging_alias)  # no challenger: each model alone
        for candidate, version in sorted(latest.items()):
            client.set_registered_model_alias(name, settings.production_alias, version)
            port = free_port()
            api = start([*uvicorn, "--port", str(port), "app:app"], {**env, "HOUSING_PREDICTION_LOG_URL": f"sqlite:///{work_dir}/{candidate}.db"},
                        work_dir / f"{candidate}.log")
            try:
                wait_for(f"http://127.0.0.1:{port}/ready", api)
                described = httpx.get(f"http://127.0.0.1:{port}/model").json()
                figures = run_wrk_rows(f"http://127.0.0.1:{port}/predict", bodies, args.duration, args.connections, work_dir)
            finally:
                stop(api)
            path = ", ".join(f"{step['name']}:{'compiled' if step['compiled'] else 'library'}" for step in described.get("predict_path", []))
            rows.append((candidate, version, figures, f"{described['compiled_predict']} ({path})"))
    finally:
        for alias, named in before.items():
            client.set_registered_model_alias(name, alias, str(named))
    port = free_port()
    bare = start([*uvicorn, "--port", str(port), "--app-dir", str(PROJECT_DIR / "bench"), "bare_app:app"], env, work_dir / "bare.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/docs", bare)
        bare_figures = run_wrk_rows(f"http://127.0.0.1:{port}/predict", bodies, args.duration, args.connections, work_dir)
    finally:
        stop(bare)
    print(f"# bench/serve.py --all-candidates — {os.cpu_count()} CPUs, wrk -t1 -c{args.connections} -d{args.duration}s, "
          f"single-row POSTs cycling through {len(bodies):,} real districts")
    print(f"\n{'production candidate':<24} {'version':>7} {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}  compiled")
    for candidate, version, r, compiled in rows:
        print(f"{candidate:<24} {version:>7} {r['rps']:>8.0f} {r['p50']:>7.2f} {r['p99']:>7.2f} {r['errors']:>6.0f}  {compiled}")
    print(f"{'(bare FastAPI constant)':<24} {'':>7} {bare_figures['rps']:>8.0f} {bare_figures['p50']:>7.2f} {bare_figures['p99']:>7.2f} "
          f"{bare_figures['errors']:>6.0f}")
    reference = next((r for candidate, _, r, _ in rows if candidate == "lightgbm_spatial"), None)
    if reference is not None:
        slowest = min(rows, key=lambda row: row[2]["rps"])
        print(f"\nslowest: {slowest[0]} at {slowest[2]['rps'] / reference['rps']:.0%} of lightgbm_spatial's rps   (target >= 80 %); "
              f"worst p99 {max(r['p99'] for _, _, r, _ in rows):.1f} ms   (target <= 5 ms)")
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--artifacts-dir", default=None)
    parser.add_argument("--skip-mlflow", action="store_true", help="Skip (b), e.g. for a quick run.")
    parser.add_argument("--skip-postgres", action="store_true", help="Skip (a2), the 2-worker PostgreSQL run.")
    parser.add_argument("--challenger", default="gradient_boosting", help="Candidate scored in shadow in (a3); 'none' skips (a3).")
    parser.add_argument("--all-candidates", action="store_true",
                        help="Instead: every registered candidate in production in turn (staging cleared), fed 1,000 real "
                        "districts, beside the bare endpoint; the aliases are put back after.")
    parser.add_argument("--postgres-url", default=None,
                        help="Admin SQLAlchemy URL of a PostgreSQL server for (a2); default: a private cluster from the system's binaries.")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    settings = get_settings(tracking_uri=args.tracking_uri, artifacts_dir=args.artifacts_dir)
    if args.all_candidates:
        return all_candidates(settings, args)
    model_uri = f"models:/{settings.model_name}@{settings.production_alias}"
    work_dir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUSING_")}
    env.update(MLFLOW_TRACKING_URI=settings.tracking_uri, HOUSING_ARTIFACTS_DIR=str(settings.artifacts_dir))
    results: dict[str, dict[str, float]] = {}
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log"]

    # (a) this API, with prediction logging on: 1 worker on SQLite, then 2 workers on PostgreSQL
    log_checks: list[str] = []
    batch_ms: list[float] = []
    runs: list[tuple[str, int, str, str | None]] = [("(a) this API, 1 worker, SQLite log", 1, f"sqlite:///{work_dir / 'prediction_log.db'}", None)]
    postgres = None
    if not args.skip_postgres:
        postgres, postgres_url = postgres_log(args.postgres_url, work_dir)
        runs.append(("(a2) this API, 2 workers, PostgreSQL log", 2, postgres_url, None))
    if args.challenger != "none":
        runs.append((f"(a3) = (a) + {args.challenger} in shadow", 1, f"sqlite:///{work_dir / 'shadow_log.db'}", args.challenger))
    version = "?"
    for label, workers, log_url, challenger in runs:
        port = free_port()
        api_env = {**env, "HOUSING_PREDICTION_LOG_URL": log_url}
        command = [*uvicorn, "--port", str(port), "--workers", str(workers), "app:app"]
        if workers > 1:
            multiproc = work_dir / f"prometheus-{port}"
            multiproc.mkdir()
            api_env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
        restore = set_challenger(settings, challenger) if challenger else None
        api = start(command, api_env, work_dir / f"api-{port}.log")
        try:
            wait_for(f"http://127.0.0.1:{port}/ready", api)
            time.sleep(3 if workers > 1 or challenger else 0)  # every worker loads the model (and the challenger)
            described = httpx.get(f"http://127.0.0.1:{port}/model").json()
            if challenger and described["challenger"] is None:
                raise SystemExit(f"{label}: the API did not load the challenger")
            version = described["version"] if not challenger else version
            results[label] = run_wrk(f"http://127.0.0.1:{port}/predict", "{" + ROW + "}", args.duration, args.connections, work_dir)
            if workers == 1:
                batch_ms = batch_request_ms(f"http://127.0.0.1:{port}/predict", settings)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            served_rows = sum(float(v) for v in re.findall(r'^housing_predictions_total\{[^}]*\} ([\d.e+]+)$', metrics, re.M))
        finally:
            stop(api)
            if restore is not None:
                restore()
        logged = count_rows(log_url)[0]
        log_checks.append(f"{label}: prediction log holds {logged:,} rows, the API predicted {served_rows:,.0f} "
                          f"({'complete' if logged == served_rows else 'MISMATCH'}); wrk counted {results[label]['requests']:,} responses")
        if challenger:
            log_checks.append(f"{label}: {shadow_rows(log_url):,} of the {logged:,} logged rows carry the challenger's prediction")
    if postgres is not None:
        postgres.stop()

    # (b) mlflow models serve, same model
    if not args.skip_mlflow:
        port = free_port()
        # MLflow 3 refuses to deserialize any model without this flag; its scoring server runs `uvicorn` from PATH.
        mlflow_env = {**env, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
                      "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
        mlflow_serve = start(
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            mlflow_env, work_dir / "mlflow.log",
        )
        try:
            wait_for(f"http://127.0.0.1:{port}/ping", mlflow_serve)
            results["(b) mlflow models serve"] = run_wrk(
                f"http://127.0.0.1:{port}/invocations", '{"dataframe_records":[{' + ROW + '}]}', args.duration, args.connections, work_dir
            )
        finally:
            stop(mlflow_serve)

    # (c) bare FastAPI endpoint returning a constant
    port = free_port()
    bare = start([*uvicorn, "--port", str(port), "--app-dir", str(PROJECT_DIR / "bench"), "bare_app:app"], env, work_dir / "bare.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/docs", bare)
        results["(c) bare FastAPI constant"] = run_wrk(f"http://127.0.0.1:{port}/predict", "{" + ROW + "}", args.duration, args.connections, work_dir)
    finally:
        stop(bare)

    print(f"# bench/serve.py — {os.cpu_count()} CPUs, wrk -t1 -c{args.connections} -d{args.duration}s, single-row POSTs, "
          f"{model_uri} (version {version})")
    print(f"\n{'server':<42} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in results.items():
        print(f"{name:<42} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['errors']:>7.0f}")
    ours = results["(a) this API, 1 worker, SQLite log"]["rps"]
    shadowed = next((r for name, r in results.items() if name.startswith("(a3)")), None)
    if shadowed is not None:
        print(f"\nwith a challenger in shadow / without: {shadowed['rps'] / ours:.0%} of the throughput   (target >= 85%), "
              f"p99 {shadowed['p99']:.1f} ms   (target <= 10 ms)")
    if "(b) mlflow models serve" in results:
        print(f"\nthis API / mlflow models serve: {ours / results['(b) mlflow models serve']['rps']:.1f}x   (target >= 10x)")
    print(f"this API / bare endpoint:       {ours / results['(c) bare FastAPI constant']['rps']:.0%}   (target >= 50%)")
    print()
    for line in log_checks:
        print(line)
    print(f"10,000-row batch request end to end: median {statistics.median(batch_ms):.0f} ms, max {max(batch_ms):.0f} ms over 7 (target <= 250 ms)")
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
