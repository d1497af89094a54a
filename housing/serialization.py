"""Model files: skops with an explicit list of trusted types, never pickle.

MLflow 3 saves scikit-learn models with skops and refuses types it does not know; the project passes
:data:`SKOPS_TRUSTED_TYPES` when it logs a pipeline and trusts only that list (from this code, never the
list a model's own MLmodel file carries) when it loads one, so a tampered model cannot widen it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import skops.io
from mlflow.models import Model

from housing.errors import UserError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "collections.OrderedDict",
    "housing.features.NeighborTargetEncoder",
    "housing.features.OutlierClipper",
    "housing.features.SpatialFeatures",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMRegressor",
    "sklearn.tree._tree.Tree",
)
"""Types beyond skops' defaults that a logged pipeline may hold; the only ones loading will accept."""


def untrusted_types(pipeline: Pipeline) -> list[str]:
    """Types in ``pipeline`` that skops would refuse to load with :data:`SKOPS_TRUSTED_TYPES`."""
    found = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    return [name for name in found if name not in SKOPS_TRUSTED_TYPES]


def load_skops_model(model_dir: Path, described: str) -> Pipeline:
    """Load the pipeline of an MLflow model folder saved with skops, trusting only :data:`SKOPS_TRUSTED_TYPES`."""
    flavor = Model.load(model_dir / "MLmodel").flavors.get("sklearn")
    if flavor is None or flavor.get("serialization_format") != "skops":
        raise UserError(f"model {described} is not a skops-serialized scikit-learn model")
    pipeline: Pipeline = skops.io.load(model_dir / flavor["pickled_model"], trusted=list(SKOPS_TRUSTED_TYPES))
    return pipeline
