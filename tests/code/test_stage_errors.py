"""Bad input ends a stage (preprocess, train) with one sentence on stderr and exit code 2, and destroys
nothing: the previous split and plots stay byte for byte, and a refused train touches no tracking store.

The stage scripts run as ``python <script>.py`` would run them (``runpy`` with ``__name__ == "__main__"``, so
``cli.run`` parses sys.argv and calls sys.exit), in this process to spare an interpreter start per case.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from housing.config.settings import Settings
from housing.data.dataset import load_and_store
from tests.helpers import assert_refused, run_script, tiny_dataset


def clean_environment(patch: pytest.MonkeyPatch, work_dir: Path) -> Settings:
    """The stages' environment: artifacts and tracking store in ``work_dir``, nothing from the caller's
    HOUSING_* or MLFLOW_*; returns the settings the stages will read."""
    for key in list(os.environ):
        if key.startswith(("HOUSING_", "MLFLOW_")):
            patch.delenv(key)
    patch.setenv("HOUSING_ARTIFACTS_DIR", str(work_dir / "artifacts"))
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work_dir / 'mlflow.db'}")
    return Settings()


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifacts of a good run: a tiny valid dataset stored by load_data's own function, then
    preprocess.py."""
    work_dir = tmp_path_factory.mktemp("preprocessed")
    with pytest.MonkeyPatch.context() as patch:
        settings = clean_environment(patch, work_dir)
        tiny_dataset(200).to_csv(work_dir / "tiny.csv", index=False)
        load_and_store(str(work_dir / "tiny.csv"), settings.dataset_path, settings.manifest_path)
        code, out, err = run_script("preprocess.py", patch=patch)
    assert code == 0 and "== Statistics ==" in out, err
    return settings.artifacts_dir


@pytest.fixture
def stages(preprocessed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A private copy of the good run's artifacts, and the environment pointing at it."""
    shutil.copytree(preprocessed, tmp_path / "artifacts")
    return clean_environment(monkeypatch, tmp_path)


def files_of(*folders: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for folder in folders for path in sorted(folder.iterdir())}


def assert_one_sentence(err: str, expected: str) -> None:
    """stderr holds the error as one line starting with 'error: ' (log lines may precede it), and no
    traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], err


@pytest.mark.parametrize(
    ("spoil", "args", "expected"),
    [
        ("drop a column", (), "error: the data is missing column(s) HouseAge"),
        (
            "out of range",
            (),
            (
                "error: column MedInc has 1 value(s) outside the valid range (> 0 and <= 25 tens of thousands"
                " of US dollars)"
            ),
        ),
        ("nothing", ("--test-size", "1.5"), "error: invalid setting test_size: Input should be less than 1"),
    ],
    ids=["a missing column", "a value out of range", "a test size of 1.5"],
)
def test_preprocess_refuses_bad_input_with_exit_2_and_keeps_the_previous_split_and_plots(
    stages, spoil, args, expected, monkeypatch
):
    before = files_of(stages.split_dir, stages.plots_dir)
    assert len(before) == 10  # 4 split pickles, split.json, outliers.pkl, scaler.pkl, 3 plots
    frame = pd.read_csv(stages.dataset_path)
    if spoil == "drop a column":
        frame.drop(columns=["HouseAge"]).to_csv(stages.dataset_path, index=False)
    elif spoil == "out of range":
        frame.loc[3, "MedInc"] = -1.0
        frame.to_csv(stages.dataset_path, index=False)
    code, _, err = run_script("preprocess.py", *args, patch=monkeypatch)
    assert code == 2
    assert_one_sentence(err, expected)
    assert files_of(stages.split_dir, stages.plots_dir) == before


def test_preprocess_without_a_dataset_says_to_run_load_data(stages, monkeypatch):
    shutil.rmtree(stages.dataset_path.parent)
    code, _, err = run_script("preprocess.py", patch=monkeypatch)
    assert code == 2
    assert_one_sentence(err, f"error: no dataset at {stages.dataset_path}; run load_data.py first")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--candidates", "linear_regression", "no_such_model"),
            "error: unknown candidate(s) no_such_model; known: ",
        ),
        (("--cv-folds", "1"), "error: invalid setting cv_folds: Input should be greater than or equal to 2"),
        (("--n-jobs", "0"), "error: invalid setting n_jobs"),
    ],
    ids=["an unknown candidate", "one fold", "no process"],
)
def test_train_refuses_bad_input_with_exit_2_before_touching_the_tracking_store(
    stages, args, expected, tmp_path, monkeypatch
):
    code, _, err = run_script("train.py", *args, patch=monkeypatch)
    assert code == 2
    assert_one_sentence(err, expected)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_train_without_a_split_says_to_run_preprocess(stages, tmp_path, monkeypatch):
    shutil.rmtree(stages.split_dir)
    code, _, err = run_script("train.py", patch=monkeypatch)
    assert code == 2
    assert_one_sentence(
        err,
        f"error: no train/test split in {stages.split_dir} (missing X_train.pkl, X_test.pkl, y_train.pkl, "
        "y_test.pkl); run preprocess.py first",
    )
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (("--since-minutes", "-5"), "invalid setting monitor_window_hours"),
        (("--since-minutes", "0"), "invalid setting monitor_window_hours"),
        (("--since-minutes", "nan"), "invalid setting monitor_window_hours"),
        (("--since-minutes", "1e12"), "invalid setting monitor_window_hours"),
        (("--watch", "-1"), "--watch takes a positive number of seconds"),
        (("--watch", "nan"), "--watch takes a positive number of seconds"),
    ],
)
def test_monitor_refuses_a_window_or_a_watch_interval_that_is_not_a_positive_number(
    args, sentence, tmp_path, monkeypatch
):
    clean_environment(monkeypatch, tmp_path)
    assert_refused(run_script("monitor.py", *args, patch=monkeypatch), sentence)
