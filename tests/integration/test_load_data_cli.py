"""load_data.py as a subprocess: good source, then each kind of bad source leaves the good artifact alone."""

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DATA_SOURCE, run_stage, stage_env


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("load")
    env = stage_env(work_dir)
    result = run_stage("load_data.py", env=env)
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
    assert "20640" in files["manifest.json"].decode().replace(",", "")


def bad_sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(pd.read_csv(DATA_SOURCE, nrows=1).columns) + "\n")
    return {
        "missing file": (str(tmp_path / "nope.csv"), "does not exist"),
        "empty file": (str(empty), "is an empty file"),
        "header only": (str(header_only), "the data has no rows"),
        "missing column": (write_variant(tmp_path, "m.csv", lambda f: f.drop(columns="AveOccup")), "missing column(s) AveOccup"),
        "misnamed column": (
            write_variant(tmp_path, "r.csv", lambda f: f.rename(columns={"MedInc": "median_income"})),
            "missing column(s) MedInc (found unexpected median_income)",
        ),
        "non-numeric": (
            write_variant(tmp_path, "n.csv", lambda f: f.astype({"HouseAge": object}).assign(HouseAge=["old"] * len(f))),
            "column HouseAge has 50 non-numeric value(s)",
        ),
        "download impossible": ("http://127.0.0.1:9/california_housing.csv", "could not download"),
    }


@pytest.mark.parametrize(
    "case", ["missing file", "empty file", "header only", "missing column", "misnamed column", "non-numeric", "download impossible"]
)
def test_bad_source_fails_cleanly_and_keeps_previous_artifact(loaded, tmp_path, case):
    env, work_dir, files_before = loaded
    source, message = bad_sources(tmp_path)[case]
    result = run_stage("load_data.py", "--source", source, env=env)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr
    data_dir = work_dir / "artifacts" / "data"
    assert {path.name: path.read_bytes() for path in data_dir.iterdir()} == files_before


def test_sklearn_fallback_without_network_says_how_to_fix(loaded, tmp_path):
    env, work_dir, files_before = loaded
    env = {key: value for key, value in env.items() if key != "HOUSING_DATA_SOURCE"}
    env["SCIKIT_LEARN_DATA"] = str(tmp_path / "sklearn-cache")  # nothing cached: it must download
    result = run_stage("load_data.py", env=env)
    if result.returncode == 0:  # a machine with internet access really downloads the data
        assert "stored 20,640 rows" in result.stdout
        return
    assert result.returncode == 2
    assert "could not download the dataset with scikit-learn's fetch_california_housing" in result.stderr
    assert "--source or HOUSING_DATA_SOURCE" in result.stderr
    data_dir = work_dir / "artifacts" / "data"
    assert {path.name: path.read_bytes() for path in data_dir.iterdir()} == files_before
