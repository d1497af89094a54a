"""Model files: a version registered while the transformers lived elsewhere still loads and predicts the
same."""

from __future__ import annotations

import importlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from housing.registry.model_files import RENAMED_MODULES, SKOPS_TRUSTED_TYPES, read_model_file
from housing.registry.versions import load_version, registry_client

LEGACY_MODEL_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "model_saved_at_housing_features"


def module_paths(data: bytes) -> set[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = archive.read("schema.json").decode()
    return {part.split('"')[0] for part in schema.split('"__module__": "')[1:]}


def test_the_fixture_names_the_old_module_path():
    """The fixture is what it claims: its classes are named at a path that no longer exists."""
    saved = module_paths((LEGACY_MODEL_DIR / "model" / "model.skops").read_bytes())
    assert "housing.features" in saved
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("housing.features")


def test_renamed_module_paths_point_at_trusted_types():
    for new in RENAMED_MODULES.values():
        assert any(name.startswith(new + ".") for name in SKOPS_TRUSTED_TYPES)
    renamed = module_paths(read_model_file(LEGACY_MODEL_DIR / "model" / "model.skops"))
    assert "housing.features" not in renamed and "housing.training.features" in renamed


def test_a_version_registered_before_the_move_loads_and_predicts_the_same(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = registry_client(tracking_uri)
    experiment = client.create_experiment("legacy", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(LEGACY_MODEL_DIR / "model"), artifact_path="model")
    client.create_registered_model("Legacy")
    version = client.create_model_version("Legacy", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    pipeline = load_version(client, client.get_model_version("Legacy", version.version))
    probe = json.loads((LEGACY_MODEL_DIR / "probe.json").read_text())
    predictions = pipeline.predict(pd.DataFrame(probe["rows"]))
    np.testing.assert_array_equal(predictions, np.asarray(probe["predictions"]))
    assert type(pipeline.named_steps["neighbors"]).__module__ == "housing.training.features"
