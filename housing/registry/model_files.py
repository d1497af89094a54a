"""Model files: skops with an explicit list of trusted types, never pickle.

MLflow 3 saves scikit-learn models with skops and refuses types it does not know; the project passes
:data:`SKOPS_TRUSTED_TYPES` when it logs a pipeline and trusts only that list (from this code, never the
list a model's own MLmodel file carries) when it loads one, so a tampered model cannot widen it.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import skops.io
from mlflow.models import Model

from housing.errors import UserError
from housing.registry.model_bounds import check_model_arrays

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "collections.OrderedDict",
    "housing.training.features.NeighborTargetEncoder",
    "housing.training.features.OutlierClipper",
    "housing.training.features.SpatialFeatures",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMRegressor",
    "sklearn.tree._tree.Tree",
)
"""Types beyond skops' defaults that a logged pipeline may hold; the only ones loading will accept."""


RENAMED_MODULES: dict[str, str] = {"housing.features": "housing.training.features"}
"""Module paths of the project's own classes in files saved before a class moved, and where it lives now.

A skops file names every object's class by module path; :func:`read_model_file` maps an old path to the
current one before the trust check, so a version registered before a move keeps loading and predicting."""


def untrusted_types(pipeline: Pipeline) -> list[str]:
    """Types in ``pipeline`` that skops would refuse to load with :data:`SKOPS_TRUSTED_TYPES`."""
    found = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    return [name for name in found if name not in SKOPS_TRUSTED_TYPES]


def load_skops_model(model_dir: Path, described: str) -> Pipeline:
    """Load the pipeline of an MLflow model folder saved with skops, trusting only
    :data:`SKOPS_TRUSTED_TYPES`, its arrays checked for bounds (:mod:`housing.registry.model_bounds`)."""
    flavor = Model.load(model_dir / "MLmodel").flavors.get("sklearn")
    if flavor is None or flavor.get("serialization_format") != "skops":
        raise UserError(f"model {described} is not a skops-serialized scikit-learn model")
    data = read_model_file(model_dir / flavor["pickled_model"])
    pipeline: Pipeline = skops.io.loads(data, trusted=list(SKOPS_TRUSTED_TYPES))
    check_model_arrays(pipeline)  # before any kernel or library code indexes one array with another
    return pipeline


def read_model_file(path: Path) -> bytes:
    """A skops file's bytes with every class's module path current (:data:`RENAMED_MODULES`)."""
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
        if not _rename_modules(schema):
            return data
        renamed = io.BytesIO()
        with zipfile.ZipFile(renamed, "w", compression=zipfile.ZIP_DEFLATED) as target:
            for info in archive.infolist():
                content = (
                    json.dumps(schema).encode() if info.filename == "schema.json" else archive.read(info)
                )
                target.writestr(info, content)
    return renamed.getvalue()


def _rename_modules(node: Any) -> bool:
    """Replace renamed module paths in a skops schema in place; whether any was."""
    changed = False
    if isinstance(node, dict):
        module = node.get("__module__")
        if isinstance(module, str) and module in RENAMED_MODULES:
            node["__module__"] = RENAMED_MODULES[module]
            changed = True
        for value in node.values():
            changed = _rename_modules(value) or changed
    elif isinstance(node, list):
        for value in node:
            changed = _rename_modules(value) or changed
    return changed
