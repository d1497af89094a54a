"""Candidate models: their reviewed configuration (``candidates.yaml``) and the pipelines built from it.

Every candidate is one scikit-learn ``Pipeline`` that takes the 8 raw features: the outlier rule,
[the spatial features and out-of-fold neighbour targets,] the scaler, then the estimator. That pipeline
is what gets logged, registered and served.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from housing.errors import UserError
from housing.training.features import NeighborTargetEncoder, OutlierClipper, SpatialFeatures

ESTIMATORS: dict[str, str] = {
    "LinearRegression": "sklearn.linear_model",
    "RandomForestRegressor": "sklearn.ensemble",
    "GradientBoostingRegressor": "sklearn.ensemble",
    "HistGradientBoostingRegressor": "sklearn.ensemble",
    "LGBMRegressor": "lightgbm",
}
"""Estimator kinds a candidate may use, with their module (a fixed list: the config file can't name
arbitrary classes). Imported when a pipeline is built, so a stage only loads the libraries it uses."""

FEATURE_SETS = ("raw", "spatial")
"""``raw``: the 8 features; ``spatial``: plus engineered spatial features and out-of-fold neighbour
targets."""

TREE_COUNT_PARAMS = ("n_estimators", "max_iter")
"""Constructor parameters that count trees; ``estimator_scale`` multiplies them."""

RELATIVE_FIT_COST = {
    "GradientBoostingRegressor": 39.0,
    "RandomForestRegressor": 62.0,
    "LGBMRegressor": 4.0,
    "HistGradientBoostingRegressor": 2.0,
}
"""Rough fit seconds per 1,000 trees, only used to start the slowest fits first."""


@dataclass(frozen=True)
class CandidateSpec:
    """One candidate model as reviewed in ``candidates.yaml``."""

    name: str
    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    features: str = "raw"
    """``raw``: the 8 features; ``spatial``: plus engineered spatial features and out-of-fold neighbour
    targets."""
    description: str = ""
    cv_folds: int | None = None
    """Folds of this candidate's cross-validation (None: the ``cv_folds`` setting). Its out-of-fold
    predictions also calibrate the version's loss estimator and prediction interval, which are the closer to
    the final model the more of the data each fold model saw."""

    def scaled_params(self, estimator_scale: float) -> dict[str, Any]:
        """Constructor parameters with tree counts multiplied by ``estimator_scale`` (at least 1 tree)."""
        params = dict(self.params)
        for key in TREE_COUNT_PARAMS:
            if key in params:
                params[key] = max(1, round(params[key] * estimator_scale))
        return params

    def expected_cost(self, estimator_scale: float) -> float:
        """A rough relative fit cost, to schedule the slowest fits first."""
        params = self.scaled_params(estimator_scale)
        trees = next((params[key] for key in TREE_COUNT_PARAMS if key in params), 1)
        return RELATIVE_FIT_COST.get(self.estimator, 1.0) * trees / 1000


def load_candidate_specs(path: Path, names: list[str] | None = None) -> list[CandidateSpec]:
    """Read the candidates file; ``names`` selects and orders a subset."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"candidates file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise UserError(f"candidates file {path} is not valid YAML ({error})") from None
    specs = {}
    for name, entry in (raw or {}).items():
        if entry.get("features", "raw") not in FEATURE_SETS:
            raise UserError(
                f"candidate {name} in {path} names unknown feature set {entry.get('features')!r}; known:"
                f" {', '.join(FEATURE_SETS)}"
            )
        if entry.get("estimator") not in ESTIMATORS:
            raise UserError(
                f"candidate {name} in {path} names unknown estimator {entry.get('estimator')!r}; "
                f"known: {', '.join(ESTIMATORS)}"
            )
        specs[name] = CandidateSpec(name=name, **entry)
    if names is None:
        return list(specs.values())
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise UserError(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(specs)}")
    return [specs[name] for name in names]


def build_pipeline(
    spec: CandidateSpec,
    *,
    outlier_quantiles: tuple[float, float],
    estimator_scale: float,
    random_state: int = 42,
) -> Pipeline:
    """The unfitted pipeline of a candidate, raw 8 features in: outlier rule, [spatial features and
    out-of-fold neighbour targets,] scaler, estimator."""
    estimator_class = getattr(importlib.import_module(ESTIMATORS[spec.estimator]), spec.estimator)
    estimator = estimator_class(**spec.scaled_params(estimator_scale))
    steps: list[tuple[str, Any]] = [("outliers", OutlierClipper(quantiles=outlier_quantiles))]
    if spec.features == "spatial":
        steps += [
            ("spatial", SpatialFeatures()),
            ("neighbors", NeighborTargetEncoder(random_state=random_state)),
        ]
    steps += [("scaler", StandardScaler()), ("model", estimator)]
    return Pipeline(steps)
