"""Load the prediction API, its peers and bare FastAPI endpoints the same way; print the figures.

All serve on this machine in one run, one after the other, with the same registered
production model: (a) this API (`uvicorn app:app`, prediction logging on), (b) `mlflow models serve` for
models:/CaliforniaHousing@production, (c) bench/bare_app.py returning a constant. Each is loaded by wrk
(one client thread, 16 connections, single-row requests) running the same client script: it sends real
districts in turn -- the first --rows (1,000) rows of the held-out test split preprocess stored under
<artifacts>/split, one per request, cycling -- and counts the status of every response it receives. The
script prints rps, p50, p99 and errors, the ratios, a check that the prediction log holds one row per
prediction the clients received a 200 for (wrk warm-up + load + batch rows; it may hold up to one more row
per wrk connection: requests wrk leaves in flight when it stops), and the end-to-end time of a 10,000-row
batch request. (a4) repeats (a) with prediction intervals off (HOUSING_SERVE_INTERVALS=false): their
serving cost. (d) is BentoML serving the same fitted pipeline with adaptive batching on
(bench/bentoml_service.py), installed by this script in an environment of its own (--bentoml-env; BentoML is
not a project dependency). (a2) repeats (a) with 2 worker processes logging to PostgreSQL (the team setup),
same load, same run. (a3) repeats (a) with a challenger in shadow: the `staging` alias is pointed at the
--challenger candidate's version for the run (and put back after), so every request is also scored by it;
it checks that every logged row carries the challenger's prediction.

--constant-row sends the original report's example request on every request instead (one identical row
flatters a server whose work depends on the row), through the same client script.

Needs a production model in the registry and the split beside it (`make pipeline`) and wrk (`apt-get install
wrk`).

    python -m bench.serve [--duration 20] [--connections 16] [--tracking-uri URI --artifacts-dir DIR]
                          [--rows 1000] [--constant-row] [--challenger gradient_boosting] [--all-candidates]
                          [--bentoml-env DIR] [--skip-bentoml]
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
from mlflow import MlflowClient
from sqlalchemy import text

from housing.api.main import SERVER_FLAGS
from housing.config.settings import Settings, get_settings
from housing.data.dataset import load_split, read_source
from housing.errors import UserError
from housing.registry.model_files import SKOPS_TRUSTED_TYPES
from housing.registry.versions import load_version, registry_client
from housing.schema import EXAMPLE_REQUEST
from housing.store.log_reads import count_rows
from housing.store.tables import make_engine
from tests.postgres import Postgres, create_database, database_url

PROJECT_DIR = Path(__file__).resolve().parent.parent

DEFAULT_ROWS = 1_000
BATCH_ROWS = 10_000
BATCH_REPEATS = 7
WARM_UP_CONNECTIONS = 4
BENTOML = "bentoml==1.4.40"
PEER_PACKAGES = (
    *("numpy", "pandas", "scipy", "scikit-learn", "lightgbm", "skops", "numba", "llvmlite", "pydantic"),
)
"""Installed in BentoML's environment at the versions of the project's lock, so it loads the same pipeline."""

WRK_SCRIPT = """-- bench/serve.py's wrk client, the same for every server: one body per request, in turn,
-- cycling; counts the status of every response received and prints the counts when the run is done.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {__BODIES__}
local prepared = {}
local next_body = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for i, body in ipairs(bodies) do
    prepared[i] = wrk.format(nil, nil, nil, body)
  end
  ok_responses = 0
  other_responses = 0
end

function request()
  next_body = next_body % #prepared + 1
  return prepared[next_body]
end

function response(status, headers, body)
  if status == 200 then
    ok_responses = ok_responses + 1
  else
    other_responses = other_responses + 1
  end
end

function done(summary, latency, requests)
  local ok, other = 0, 0
  for _, thread in ipairs(threads) do
    ok = ok + thread:get("ok_responses")
    other = other + thread:get("other_responses")
  end
  io.write(string.format("client-received statuses: 200 %d, other %d\\n", ok, other))
end
"""
STATUS_COUNTS = re.compile(r"client-received statuses: 200 (\d+), other (\d+)")


@dataclass(frozen=True)
class Feed:
    """What the clients send to every server: single rows, one per request, in turn."""

    rows: list[dict[str, float]]
    description: str

    def bodies(self, wrapper: str | None = None) -> list[str]:
        """Request bodies: the row as a JSON object (this API, the bare endpoint), or inside a one-row list
        under ``wrapper`` (``dataframe_records`` for mlflow, ``rows`` for BentoML)."""
        return [orjson.dumps({wrapper: [row]} if wrapper else row).decode() for row in self.rows]


def held_out_feed(settings: Settings, count: int) -> Feed:
    """The first ``count`` rows of the held-out test split preprocess stored (real districts the model never
    trained on)."""
    try:
        split = load_split(settings.split_dir)
    except UserError as error:
        raise SystemExit(
            f"{error} (pass --artifacts-dir of the pipeline run behind the registry, or --constant-row)"
        ) from None
    provenance_path = settings.split_dir / "split.json"
    seed = (
        orjson.loads(provenance_path.read_bytes()).get("random_state", "?")
        if provenance_path.exists()
        else "?"
    )
    rows = split.x_test.head(count).to_dict(orient="records")
    return Feed(
        [{str(key): float(value) for key, value in row.items()} for row in rows],
        f"{len(rows):,} real districts in turn (the first of the {len(split.x_test):,} held-out test rows of"
        f" split random_state {seed}, {settings.split_dir})",
    )


def constant_feed() -> Feed:
    """The original report's example request on every request (--constant-row)."""
    return Feed(
        [dict(EXAMPLE_REQUEST)],
        "one constant row on every request (the original report's example request; --constant-row)",
    )


def lua_long_string(value: str) -> str:
    """``value`` as a Lua long-bracket literal whose level its text cannot close."""
    level = 0
    while f"]{'=' * level}]" in value:
        level += 1
    return f"[{'=' * level}[{value}]{'=' * level}]"


def wrk_script(bodies: Sequence[str]) -> str:
    """The Lua client script for ``bodies`` (see :data:`WRK_SCRIPT`)."""
    if not bodies:
        raise ValueError("the client needs at least one body")
    return WRK_SCRIPT.replace("__BODIES__", ",\n  ".join(lua_long_string(body) for body in bodies))


def write_wrk_script(work_dir: Path, name: str, bodies: Sequence[str]) -> Path:
    path = work_dir / f"{name}.lua"
    path.write_text(wrk_script(bodies))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LOAD_TEST_ROWS_PER_SECOND = "1000000000"
"""The per-client row rate of the API under test: one load generator is one client, which a production
limit would slow down; the check runs on every request all the same."""


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


def client_statuses(out: str) -> tuple[int, int]:
    """(200s, other statuses) the client script counted, from wrk's output."""
    match = STATUS_COUNTS.search(out)
    if match is None:
        raise SystemExit(f"unexpected wrk output (no status counts from the client script):\n{out}")
    return int(match.group(1)), int(match.group(2))


def run_wrk(url: str, script: Path, duration: int, connections: int) -> dict[str, float]:
    """A 2 s warm-up, then the measured run, both with ``script``: rps, p50/p99 ms, errors, responses and 200s
    received."""
    warm_up = subprocess.run(
        ["wrk", "-t1", f"-c{WARM_UP_CONNECTIONS}", "-d2s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def found(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out)
        if match is None:
            raise SystemExit(f"unexpected wrk output (no {pattern!r}):\n{out}")
        return match

    def latency(label: str) -> float:
        value, unit = found(rf"{label}\s+([\d.]+)(us|ms|s)").groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = socket_errors(out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    ok, other = client_statuses(out)
    warm_up_ok, warm_up_other = client_statuses(warm_up)
    return {
        "rps": float(found(r"Requests/sec:\s+([\d.]+)").group(1)),
        "p50": latency("50%"),
        "p99": latency("99%"),
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
        "requests": int(found(r"(\d+) requests in").group(1)),
        "ok": ok,
        "other": other,
        "warm_up_ok": warm_up_ok,
        "warm_up_other": warm_up_other,
        # wrk stops with up to one request in flight per connection (and one per socket error): the server may
        # have answered, and logged, those after the client stopped listening.
        "unanswered_bound": WARM_UP_CONNECTIONS + connections + errors + socket_errors(warm_up),
    }


def socket_errors(out: str) -> int:
    """wrk's connect, read, write and timeout errors."""
    return sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))


def received_line(label: str, logged: int, figures: dict[str, float], batch_rows: int = 0) -> str:
    """Log completeness against what the clients received: every prediction answered with a 200 is logged
    once.

    The log may hold a few more rows than 200s received, never more than the requests wrk left in flight."""
    return f"{label}: prediction log holds {logged:,} rows; {log_verdict(logged, figures, batch_rows)}"


def log_verdict(logged: int, figures: dict[str, float], batch_rows: int = 0) -> str:
    received = int(figures["warm_up_ok"] + figures["ok"]) + batch_rows
    in_flight = int(figures["unanswered_bound"])
    batch = f" + batch {batch_rows:,}" if batch_rows else ""
    counted = (
        f"clients received a 200 for {received:,} predictions (wrk warm-up {figures['warm_up_ok']:,.0f} +"
        f" load {figures['ok']:,.0f}{batch})"
    )
    if logged < received:
        return f"{counted}: INCOMPLETE, {received - logged:,} answered predictions missing from the log"
    if logged > received + in_flight:
        return (
            f"{counted}: {logged - received:,} rows too many (more than the {in_flight} requests wrk can"
            " leave in flight)"
        )
    return (
        f"{counted}: complete ({logged - received} more logged: requests wrk left in flight at its stop, at"
        f" most {in_flight})"
    )


def batch_request_ms(
    url: str, settings: object, repeats: int = BATCH_REPEATS, *, bare: bool = False
) -> list[float]:
    """Milliseconds from sending a 10,000-row request (real rows, JSON ready) to having the whole response.

    Every response must be a 200 with 10,000 predictions (``bare``: 10,000 answers), so the clients received
    ``repeats`` x 10,000."""
    frame = read_source(
        os.environ.get("HOUSING_DATA_SOURCE")
        or str(PROJECT_DIR.parent / "shared/data/california_housing.csv")
    )
    rows = frame.drop(columns="MedHouseVal").sample(BATCH_ROWS, random_state=0).to_dict(orient="records")
    body = orjson.dumps(rows)
    timings = []
    with httpx.Client(timeout=60) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.post(url, content=body, headers={"content-type": "application/json"})
            content = response.content
            timings.append((time.perf_counter() - started) * 1000)
            answers = orjson.loads(content) if response.status_code == 200 else {}
            if len(answers if bare else answers.get("predictions", [])) != BATCH_ROWS:
                raise SystemExit(
                    f"the {BATCH_ROWS:,}-row request got {response.status_code}: {content[:200]!r}"
                )
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
    versions = [
        v
        for v in client.search_model_versions(f"name = '{settings.model_name}'")
        if v.tags.get("candidate") == candidate
    ]
    if not versions:
        raise SystemExit(f"no registered version of candidate {candidate}")
    before = client.get_registered_model(settings.model_name).aliases.get(settings.staging_alias)
    client.set_registered_model_alias(
        settings.model_name, settings.staging_alias, str(max(int(v.version) for v in versions))
    )

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
            return int(
                connection.execute(
                    text("select count(*) from predictions where shadow_prediction is not null")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=PROJECT_DIR, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT
    )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


def locked_versions(names: Sequence[str]) -> list[str]:
    """``name==version`` of each of ``names`` in the project's runtime lock."""
    lock = (PROJECT_DIR / "requirements" / "runtime.lock").read_text()
    pins = []
    for name in names:
        match = re.search(rf"^{re.escape(name)}==([^\s\\]+)", lock, re.MULTILINE | re.IGNORECASE)
        if match is None:
            raise SystemExit(f"{name} is not in requirements/runtime.lock")
        pins.append(f"{name}=={match.group(1)}")
    return pins


def bentoml_environment(env_dir: Path) -> Path:
    """BentoML's own virtual environment (created on first use: BentoML and the model's libraries at the
    lock's versions); the path of its ``bentoml`` command."""
    command = env_dir / "bin" / "bentoml"
    if command.exists():
        return command
    print(f"# creating BentoML's environment in {env_dir} (once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    subprocess.run(
        [str(env_dir / "bin" / "pip"), "install", "--quiet", BENTOML, *locked_versions(PEER_PACKAGES)],
        check=True,
    )
    return command


def save_production_pipeline(settings: Settings, path: Path) -> str:
    """Save the production version's fitted pipeline as a skops file for BentoML; its version."""
    import skops.io

    client = registry_client(settings.tracking_uri)
    version = client.get_model_version_by_alias(settings.model_name, settings.production_alias)
    skops.io.dump(load_version(client, version), path)
    return str(version.version)


def serve_with_bentoml(
    settings: Settings, env_dir: Path, work_dir: Path, script: Path, args: argparse.Namespace
) -> dict[str, float]:
    """(d): the production pipeline behind ``bentoml serve`` (bench/bentoml_service.py), loaded by wrk."""
    command = bentoml_environment(env_dir)
    model_path = work_dir / "peer-model.skops"
    save_production_pipeline(settings, model_path)
    port = free_port()
    peer_env = {
        "PATH": f"{command.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", str(work_dir)),
        "BENTOML_HOME": str(work_dir / "bentoml-home"),
        "PYTHONPATH": str(PROJECT_DIR),
        "HOUSING_PEER_MODEL": str(model_path),
        "HOUSING_PEER_TRUSTED_TYPES": ",".join(SKOPS_TRUSTED_TYPES),
    }
    peer = subprocess.Popen(
        [
            str(command),
            "serve",
            "bentoml_service:HousingPeer",
            "--working-dir",
            str(PROJECT_DIR / "bench"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=PROJECT_DIR / "bench",
        env=peer_env,
        stdout=open(work_dir / "bentoml.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", peer, timeout=180)
        return run_wrk(f"http://127.0.0.1:{port}/predict", script, args.duration, args.connections)
    finally:
        stop(peer)


def feed_from_args(settings: Settings, args: argparse.Namespace) -> Feed:
    return constant_feed() if args.constant_row else held_out_feed(settings, args.rows)


def all_candidates(settings: Settings, args: argparse.Namespace) -> int:
    """Every registered candidate in production in turn, fed the same rows; rps, p50, p99, errors, log,
    compiled."""
    feed = feed_from_args(settings, args)
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
    env.update(
        MLFLOW_TRACKING_URI=settings.tracking_uri,
        HOUSING_ARTIFACTS_DIR=str(settings.artifacts_dir),
        HOUSING_PREDICT_ROWS_PER_SECOND=LOAD_TEST_ROWS_PER_SECOND,  # the limit is checked, never reached
    )
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log", *SERVER_FLAGS]
    script = write_wrk_script(work_dir, "rows", feed.bodies())
    rows: list[tuple[str, str, dict[str, float], str, str]] = []
    try:
        if settings.staging_alias in before:
            client.delete_registered_model_alias(
                name, settings.staging_alias
            )  # no challenger: each model alone
        for candidate, version in sorted(latest.items()):
            client.set_registered_model_alias(name, settings.production_alias, version)
            port = free_port()
            log_url = f"sqlite:///{work_dir}/{candidate}.db"
            api = start(
                [*uvicorn, "--port", str(port), "app:app"],
                {**env, "HOUSING_PREDICTION_LOG_URL": log_url},
                work_dir / f"{candidate}.log",
            )
            try:
                wait_for(f"http://127.0.0.1:{port}/ready", api)
                described = httpx.get(f"http://127.0.0.1:{port}/model").json()
                figures = run_wrk(f"http://127.0.0.1:{port}/predict", script, args.duration, args.connections)
            finally:
                stop(api)
            path = ", ".join(
                f"{step['name']}:{'compiled' if step['compiled'] else 'library'}"
                for step in described.get("predict_path", [])
            )
            logged, received = count_rows(log_url)[0], int(figures["warm_up_ok"] + figures["ok"])
            complete = received <= logged <= received + figures["unanswered_bound"]
            log = f"{'complete' if complete else 'MISMATCH'} {logged - received:+}"
            rows.append((candidate, version, figures, log, f"{described['compiled_predict']} ({path})"))
    finally:
        for alias, named in before.items():
            client.set_registered_model_alias(name, alias, str(named))
    port = free_port()
    bare = start(
        [*uvicorn, "--port", str(port), "--app-dir", str(PROJECT_DIR / "bench"), "bare_app:app"],
        env,
        work_dir / "bare.log",
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/docs", bare)
        bare_figures = run_wrk(f"http://127.0.0.1:{port}/predict", script, args.duration, args.connections)
    finally:
        stop(bare)
    print(
        f"# bench/serve.py --all-candidates — {os.cpu_count()} CPUs, wrk -t1 -c{args.connections}"
        f" -d{args.duration}s, single-row POSTs: {feed.description}"
    )
    print(
        "# log: logged rows minus the 200s the client received (warm-up + load); complete when 0 to + the"
        " requests wrk left in flight"
    )
    print(
        f"\n{'production candidate':<24} {'version':>7} {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
        f" {'200s':>8}  {'log':<10} compiled"
    )
    for candidate, version, r, log, compiled in rows:
        print(
            f"{candidate:<24} {version:>7} {r['rps']:>8.0f} {r['p50']:>7.2f} {r['p99']:>7.2f}"
            f" {r['errors']:>6.0f} {r['ok']:>8.0f}  {log:<10} {compiled}"
        )
    print(
        f"{'(bare FastAPI constant)':<24} {'':>7} {bare_figures['rps']:>8.0f} {bare_figures['p50']:>7.2f}"
        f" {bare_figures['p99']:>7.2f} {bare_figures['errors']:>6.0f} {bare_figures['ok']:>8.0f}"
    )
    reference = next((r for candidate, _, r, _, _ in rows if candidate == "lightgbm_spatial"), None)
    if reference is not None:
        slowest = min(rows, key=lambda row: row[2]["rps"])
        print(
            f"\nslowest: {slowest[0]} at {slowest[2]['rps'] / reference['rps']:.0%} of lightgbm_spatial's rps"
            f"   (target >= 80 %); worst p99 {max(r['p99'] for _, _, r, _, _ in rows):.1f} ms   (target <="
            " 5 ms)"
        )
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=int, default=20, help="Seconds of each measured wrk run [default 20]."
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk connections [default 16].")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking store of the registry [default: the settings']."
    )
    parser.add_argument(
        "--artifacts-dir",
        default=None,
        help="Artifacts of the same pipeline run: the held-out split is read from <dir>/split.",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        help=f"Held-out test rows the clients cycle through, one per request [default {DEFAULT_ROWS:,}].",
    )
    parser.add_argument(
        "--constant-row",
        action="store_true",
        help=(
            "Send the original report's example request on every request instead (one identical row"
            " flatters a server whose work depends on the row), same client script."
        ),
    )
    parser.add_argument("--skip-mlflow", action="store_true", help="Skip (b), e.g. for a quick run.")
    parser.add_argument("--skip-bentoml", action="store_true", help="Skip (d), BentoML.")
    parser.add_argument(
        "--bentoml-env",
        type=Path,
        default=PROJECT_DIR / ".bench-peers" / "bentoml",
        help="BentoML's own virtual environment, created there on first use [default .bench-peers/bentoml].",
    )
    parser.add_argument(
        "--skip-postgres", action="store_true", help="Skip (a2), the 2-worker PostgreSQL run."
    )
    parser.add_argument(
        "--challenger",
        default="gradient_boosting",
        help="Candidate scored in shadow in (a3); 'none' skips (a3).",
    )
    parser.add_argument(
        "--all-candidates",
        action="store_true",
        help=(
            "Instead: every registered candidate in production in turn (staging cleared), fed the same rows"
            " (held-out districts, or --constant-row), beside the bare endpoint; the aliases are put back"
            " after."
        ),
    )
    parser.add_argument(
        "--postgres-url",
        default=None,
        help=(
            "Admin SQLAlchemy URL of a PostgreSQL server for (a2); default: a private cluster from the"
            " system's binaries."
        ),
    )
    args = parser.parse_args()
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    settings = get_settings(tracking_uri=args.tracking_uri, artifacts_dir=args.artifacts_dir)
    if args.all_candidates:
        return all_candidates(settings, args)
    feed = feed_from_args(settings, args)
    model_uri = f"models:/{settings.model_name}@{settings.production_alias}"
    work_dir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    api_script = write_wrk_script(work_dir, "api", feed.bodies())  # also the bare endpoint's
    mlflow_script = write_wrk_script(work_dir, "mlflow", feed.bodies("dataframe_records"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOUSING_")}
    env.update(
        MLFLOW_TRACKING_URI=settings.tracking_uri,
        HOUSING_ARTIFACTS_DIR=str(settings.artifacts_dir),
        HOUSING_PREDICT_ROWS_PER_SECOND=LOAD_TEST_ROWS_PER_SECOND,  # the limit is checked, never reached
    )
    results: dict[str, dict[str, float]] = {}
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log", *SERVER_FLAGS]

    # (a) this API, with prediction logging on: 1 worker on SQLite, then 2 workers on PostgreSQL
    log_checks: list[str] = []
    batch_ms: list[float] = []
    runs: list[tuple[str, int, str, str | None, dict[str, str]]] = [
        ("(a) this API, 1 worker, SQLite log", 1, f"sqlite:///{work_dir / 'prediction_log.db'}", None, {}),
        (
            "(a4) = (a) without prediction intervals",
            1,
            f"sqlite:///{work_dir / 'no_intervals_log.db'}",
            None,
            {"HOUSING_SERVE_INTERVALS": "false"},
        ),
    ]
    postgres = None
    if not args.skip_postgres:
        postgres, postgres_url = postgres_log(args.postgres_url, work_dir)
        runs.append(("(a2) this API, 2 workers, PostgreSQL log", 2, postgres_url, None, {}))
    if args.challenger != "none":
        runs.append(
            (
                f"(a3) = (a) + {args.challenger} in shadow",
                1,
                f"sqlite:///{work_dir / 'shadow_log.db'}",
                args.challenger,
                {},
            )
        )
    version = "?"
    for label, workers, log_url, challenger, extra_env in runs:
        port = free_port()
        api_env = {**env, "HOUSING_PREDICTION_LOG_URL": log_url, **extra_env}
        command = [*uvicorn, "--port", str(port), "--workers", str(workers), "app:app"]
        if workers > 1:
            multiproc = work_dir / f"prometheus-{port}"
            multiproc.mkdir()
            api_env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
        restore = set_challenger(settings, challenger) if challenger else None
        api = start(command, api_env, work_dir / f"api-{port}.log")
        batch_rows = 0
        try:
            wait_for(f"http://127.0.0.1:{port}/ready", api)
            time.sleep(
                3 if workers > 1 or challenger else 0
            )  # every worker loads the model (and the challenger)
            described = httpx.get(f"http://127.0.0.1:{port}/model").json()
            if challenger and described["challenger"] is None:
                raise SystemExit(f"{label}: the API did not load the challenger")
            version = described["version"] if not challenger else version
            results[label] = run_wrk(
                f"http://127.0.0.1:{port}/predict", api_script, args.duration, args.connections
            )
            if workers == 1 and not extra_env:
                timings = batch_request_ms(f"http://127.0.0.1:{port}/predict", settings)
                batch_ms = batch_ms or timings  # the figure printed is (a)'s
                batch_rows = len(timings) * BATCH_ROWS
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            served_rows = sum(
                float(v)
                for v in re.findall(r"^housing_predictions_total\{[^}]*\} ([\d.e+]+)$", metrics, re.M)
            )
        finally:
            stop(api)
            if restore is not None:
                restore()
        logged = count_rows(log_url)[0]
        log_checks.append(
            f"{received_line(label, logged, results[label], batch_rows)}; the API's own counter says"
            f" {served_rows:,.0f}"
        )
        if challenger:
            log_checks.append(
                f"{label}: {shadow_rows(log_url):,} of the {logged:,} logged rows carry the challenger's"
                " prediction"
            )
    if postgres is not None:
        postgres.stop()

    # (b) mlflow models serve, same model
    if not args.skip_mlflow:
        port = free_port()
        # MLflow 3 refuses to deserialize any model without this flag; its scoring server runs `uvicorn` from
        # PATH.
        mlflow_env = {
            **env,
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
        mlflow_serve = start(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            mlflow_env,
            work_dir / "mlflow.log",
        )
        try:
            wait_for(f"http://127.0.0.1:{port}/ping", mlflow_serve)
            results["(b) mlflow models serve"] = run_wrk(
                f"http://127.0.0.1:{port}/invocations", mlflow_script, args.duration, args.connections
            )
        finally:
            stop(mlflow_serve)

    # (d) BentoML, same fitted pipeline, adaptive batching on
    if not args.skip_bentoml:
        results["(d) BentoML, adaptive batching"] = serve_with_bentoml(
            settings,
            args.bentoml_env,
            work_dir,
            write_wrk_script(work_dir, "bentoml", feed.bodies("rows")),
            args,
        )

    # (c) bare FastAPI endpoints: a constant (it ignores the body the client sends), and one that validates
    # the body against the same feature model (one row, or the 10,000-row list of the batch request)
    bare_batch_ms: list[float] = []
    for label, app_name, ready in (
        ("(c) bare FastAPI constant", "bare_app:app", "/docs"),
        ("(c2) bare FastAPI validating", "bare_app:validating", "/docs"),
    ):
        port = free_port()
        bare = start(
            [*uvicorn, "--port", str(port), "--app-dir", str(PROJECT_DIR / "bench"), app_name],
            env,
            work_dir / f"bare-{port}.log",
        )
        try:
            wait_for(f"http://127.0.0.1:{port}{ready}", bare)
            results[label] = run_wrk(
                f"http://127.0.0.1:{port}/predict", api_script, args.duration, args.connections
            )
            if app_name.endswith("validating"):
                bare_batch_ms = batch_request_ms(f"http://127.0.0.1:{port}/predict", settings, bare=True)
        finally:
            stop(bare)

    print(
        f"# bench/serve.py — {os.cpu_count()} CPUs, wrk -t1 -c{args.connections} -d{args.duration}s,"
        f" single-row POSTs, {model_uri} (version {version})"
    )
    print(f"# every server: the same client script sending {feed.description}")
    print(f"\n{'server':<42} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'200s':>9}")
    for name, r in results.items():
        print(
            f"{name:<42} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['errors']:>7.0f}"
            f" {r['ok']:>9.0f}"
        )
    ours = results["(a) this API, 1 worker, SQLite log"]["rps"]
    shadowed = next((r for name, r in results.items() if name.startswith("(a3)")), None)
    if shadowed is not None:
        print(
            f"\nwith a challenger in shadow / without: {shadowed['rps'] / ours:.0%} of the throughput  "
            f" (target >= 85%), p99 {shadowed['p99']:.1f} ms   (target <= 10 ms)"
        )
    bare_ranges = results["(a4) = (a) without prediction intervals"]
    print(
        f"with prediction intervals / without: {ours / bare_ranges['rps']:.0%} of the throughput  "
        f" (target >= 90%), p99 {results['(a) this API, 1 worker, SQLite log']['p99']:.2f} ms vs"
        f" {bare_ranges['p99']:.2f} ms"
    )
    if "(b) mlflow models serve" in results:
        print(
            f"\nthis API / mlflow models serve: {ours / results['(b) mlflow models serve']['rps']:.1f}x  "
            " (target >= 10x)"
        )
    peer = results.get("(d) BentoML, adaptive batching")
    if peer is not None:
        print(
            f"this API / BentoML:             {ours / peer['rps']:.1f}x   (target >= 2x), p99"
            f" {results['(a) this API, 1 worker, SQLite log']['p99']:.2f} ms vs {peer['p99']:.2f} ms"
            " (target: lower)"
            + (f"; BentoML's {peer['errors']:.0f} errors are counted in its rps" if peer["errors"] else "")
        )
    print(
        f"this API / bare endpoint:       {ours / results['(c) bare FastAPI constant']['rps']:.0%} of the"
        f" constant one, {ours / results['(c2) bare FastAPI validating']['rps']:.2f}x the validating one"
        " (target >= 1.0x)"
    )
    print()
    for line in log_checks:
        print(line)
    print(
        f"{BATCH_ROWS:,}-row batch request end to end: median {statistics.median(batch_ms):.0f} ms, max"
        f" {max(batch_ms):.0f} ms over {len(batch_ms)}; the validating bare endpoint, same list: median"
        f" {statistics.median(bare_batch_ms):.0f} ms (target: at most it)"
    )
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
