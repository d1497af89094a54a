"""load_data.py as a subprocess: good source, then each kind of bad source leaves the good artifact alone;
hostile sources (a system file, other URL schemes, an endless or silent server) are refused without
echoing a line of what they hold."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DATA_SOURCE, run_in_process, run_stage, stage_env
from tests.helpers import PASSWD, DataServer


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers: the URL of a stalled
    server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/data.csv"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("load")
    env = stage_env(work_dir)
    result = run_in_process("load_data.py", env=env)
    assert result.returncode == 0, result.stderr
    data_dir = work_dir / "artifacts" / "data"
    return env, work_dir, {path.name: path.read_bytes() for path in data_dir.iterdir()}


def write_variant(tmp_path: Path, name: str, mutate) -> str:
    frame = pd.read_csv(DATA_SOURCE, nrows=50)
    path = tmp_path / name
    mutate(frame).to_csv(path, index=False)
    return str(path)


def test_good_source_writes_dataset_and_manifest(loaded):
    env, work_dir, files = loaded
    assert set(files) == {"california_housing.csv", "manifest.json"}
    manifest = json.loads(files["manifest.json"])
    assert manifest["rows"] == 20_640 and manifest["source"] == str(DATA_SOURCE)
    assert manifest["sha256"] == hashlib.sha256(files["california_housing.csv"]).hexdigest()  # of the stored
    stored = pd.read_csv(io.BytesIO(files["california_housing.csv"]))
    pd.testing.assert_frame_equal(stored, pd.read_csv(DATA_SOURCE))  # the source's rows, exactly


def bad_sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(pd.read_csv(DATA_SOURCE, nrows=1).columns) + "\n")
    return {
        "missing file": (str(tmp_path / "nope.csv"), "does not exist"),
        "empty file": (str(empty), "is an empty file"),
        "header only": (str(header_only), "the data has no rows"),
        "missing column": (
            write_variant(tmp_path, "m.csv", lambda f: f.drop(columns="AveOccup")),
            "missing column(s) AveOccup",
        ),
        "misnamed column": (
            write_variant(tmp_path, "r.csv", lambda f: f.rename(columns={"MedInc": "median_income"})),
            "missing column(s) MedInc (found unexpected median_income)",
        ),
        "non-numeric": (
            write_variant(
                tmp_path, "n.csv", lambda f: f.astype({"HouseAge": object}).assign(HouseAge=["old"] * len(f))
            ),
            "column HouseAge has 50 non-numeric value(s)",
        ),
        "download impossible": ("http://127.0.0.1:9/california_housing.csv", "could not download"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "empty file",
        "header only",
        "missing column",
        "misnamed column",
        "non-numeric",
        "download impossible",
    ],
)
def test_bad_source_fails_cleanly_and_keeps_previous_artifact(loaded, tmp_path, case):
    env, work_dir, files_before = loaded
    source, message = bad_sources(tmp_path)[case]
    result = run_in_process("load_data.py", "--source", source, env=env)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr
    data_dir = work_dir / "artifacts" / "data"
    assert {path.name: path.read_bytes() for path in data_dir.iterdir()} == files_before


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A local port bound but not listening: every connection to it is refused at once, and no other process
    can listen there while it is held."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_sklearn_fallback_without_network_says_how_to_fix(loaded, tmp_path):
    """No source: scikit-learn's downloader runs, with nothing cached and every HTTP(S) connection sent to a
    proxy that refuses it (urllib honours the *_proxy variables), so the download fails on any machine."""
    env, work_dir, files_before = loaded
    env = {
        key: value
        for key, value in env.items()
        if key != "HOUSING_DATA_SOURCE" and not key.lower().endswith("_proxy")
    }
    env["SCIKIT_LEARN_DATA"] = str(tmp_path / "sklearn-cache")  # nothing cached: it must download
    with refusing_port() as port:
        proxy = f"http://127.0.0.1:{port}"
        env.update(http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy, HTTPS_PROXY=proxy)
        result = run_in_process("load_data.py", env=env)
    line = assert_refused(
        result,
        "could not download the dataset with scikit-learn's fetch_california_housing",
        work_dir,
        files_before,
    )
    assert "Connection refused" in line, line  # the refusing proxy's doing, not some other failure
    assert line.endswith("give a CSV path or URL with --source or HOUSING_DATA_SOURCE"), line


def assert_refused(result, message: str, work_dir: Path, files_before: dict[str, bytes]) -> str:
    """Exit 2 with one ``error:`` sentence holding ``message``, no traceback, the stored artifacts
    untouched."""
    assert result.returncode == 2, result.stdout + result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr
    data_dir = work_dir / "artifacts" / "data"
    assert {path.name: path.read_bytes() for path in data_dir.iterdir()} == files_before
    return error_lines[0]


def passwd_lines() -> list[str]:
    return [line for line in PASSWD.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("source", [str(PASSWD), f"file://{PASSWD}", f"FILE://localhost{PASSWD}"])
def test_a_system_file_is_refused_without_echoing_it(loaded, source):
    env, work_dir, files_before = loaded
    result = run_in_process("load_data.py", "--source", source, env=env)
    message = "is not a readable CSV" if source == str(PASSWD) else "give a local path or an http(s) URL"
    assert_refused(result, message, work_dir, files_before)
    output = result.stdout + result.stderr
    assert passwd_lines() and not [line for line in passwd_lines() if line in output]
    assert "root:x" not in output


def test_a_file_without_the_contract_header_is_not_quoted(loaded, tmp_path):
    env, work_dir, files_before = loaded
    secret = tmp_path / "notes.txt"
    secret.write_text("SECRET-first-line-4242\nsecond SECRET line\n")
    result = run_in_process("load_data.py", "--source", str(secret), env=env)
    assert_refused(result, "has none of the columns MedInc", work_dir, files_before)
    assert "SECRET" not in result.stdout + result.stderr


@pytest.mark.parametrize("source", ["ftp://127.0.0.1/data.csv", "s3://bucket/data.csv", "data://text/csv,a"])
def test_other_url_schemes_are_refused(loaded, source):
    env, work_dir, files_before = loaded
    result = run_in_process("load_data.py", "--source", source, env=env)
    assert_refused(result, "is refused: give a local path or an http(s) URL", work_dir, files_before)


def test_an_endless_download_is_refused_at_the_size_cap(loaded):
    env, work_dir, files_before = loaded
    with DataServer() as server:
        result = run_in_process(
            "load_data.py",
            "--source",
            f"{server.url}/endless",
            env={**env, "HOUSING_DOWNLOAD_MAX_BYTES": "100000"},
        )
        assert server.requests == [("/endless", None)]
    assert_refused(
        result, "is larger than the 100,000-byte limit (HOUSING_DOWNLOAD_MAX_BYTES)", work_dir, files_before
    )


def test_a_declared_size_over_the_cap_is_refused_before_reading(loaded):
    env, work_dir, files_before = loaded
    with DataServer() as server:
        result = run_in_process(
            "load_data.py", "--source", f"{server.url}/data.csv", "--download-max-bytes", "100000", env=env
        )
    assert_refused(result, "is larger than the 100,000-byte limit", work_dir, files_before)


def test_a_redirect_to_a_local_file_is_refused(loaded):
    env, work_dir, files_before = loaded
    with DataServer() as server:
        result = run_in_process("load_data.py", "--source", f"{server.url}/to-file", env=env)
    assert_refused(result, "could not download data source URL", work_dir, files_before)
    assert not [line for line in passwd_lines() if line in result.stdout + result.stderr]


def test_a_server_that_never_answers_times_out(loaded):
    env, work_dir, files_before = loaded
    with silent_server() as url:  # the stage must give up by itself: the 60 s deadline only stops a hung test
        result = run_stage(
            "load_data.py", "--source", url, env={**env, "HOUSING_DOWNLOAD_TIMEOUT": "2"}, timeout=60
        )
    assert_refused(result, "within 2 s (HOUSING_DOWNLOAD_TIMEOUT)", work_dir, files_before)
