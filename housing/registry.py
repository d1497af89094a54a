"""The model registry: loading versions safely, finding the latest candidates, and the promotion gates.

Aliases, not deprecated stages: ``staging`` names the best candidate of the latest training run that
passed the staging gate; ``production`` names the served version and moves only when a candidate beats
the current production on the same evaluation data, scored from the models themselves.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from housing.config import Settings
from housing.digests import frame_sha256
from housing.errors import UserError
from housing.schema import FEATURE_NAMES
from housing.scoring import rank_key, regression_metrics
from housing.serialization import load_skops_model
from housing.tracking import RUN_TYPE_TAG, TRAINING_RUN_TYPE, quiet_mlflow

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)

STAGING_GATE_TAG = "staging_gate"


def get_version_by_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def resolve_model_uri(client: MlflowClient, model_uri: str) -> ModelVersion:
    """The registered version a ``models:/Name/3`` or ``models:/Name@alias`` URI names; a clear error if none."""
    match = MODEL_URI.match(model_uri)
    if match is None:
        raise UserError(f"model URI {model_uri!r} is not of the form models:/Name/VERSION or models:/Name@ALIAS")
    name, version, alias = match["name"], match["version"], match["alias"]
    if alias is not None:
        found = get_version_by_alias(client, name, alias)
        if found is None:
            raise UserError(f"no version of model {name} has the alias '{alias}'")
        return found
    return client.get_model_version(name, version)


def load_version(client: MlflowClient, version: ModelVersion) -> Pipeline:
    """Load a registered version's pipeline with skops (read in place from a local store, else downloaded).

    Only :data:`housing.serialization.SKOPS_TRUSTED_TYPES` are trusted. That list comes from this code, not from
    the model's own MLmodel file, so a tampered model can't widen it (and no pickle is ever loaded).
    """
    import mlflow

    quiet_mlflow()
    location = client.get_model_version_download_uri(version.name, str(version.version))
    local = _local_path(location)
    if local is not None:  # a local artifact store: read in place, no copy
        return load_skops_model(local, f"{version.name} version {version.version}")
    with tempfile.TemporaryDirectory(prefix="housing-model-") as tmp:
        local_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=client.tracking_uri))
        return load_skops_model(local_dir, f"{version.name} version {version.version}")


def _local_path(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path))
        if (path / "MLmodel").is_file():
            return path
    return None


def load_model(model_uri: str, tracking_uri: str) -> Pipeline:
    """Load the pipeline a ``models:/`` URI names from the registry at ``tracking_uri``."""
    client = registry_client(tracking_uri)
    return load_version(client, resolve_model_uri(client, model_uri))


def load_model_version(client: MlflowClient, model_name: str, version: str) -> Pipeline:
    """Load one registered version of ``model_name``."""
    return load_version(client, client.get_model_version(model_name, version))


def registry_client(tracking_uri: str) -> MlflowClient:
    """A client whose tracking store and model registry are both ``tracking_uri``."""
    from mlflow import MlflowClient

    quiet_mlflow()
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


@dataclass(frozen=True)
class EvaluationData:
    """The data every model is scored on during promotion (the test split, plus recent labelled traffic)."""

    x: pd.DataFrame
    y: pd.Series
    description: str
    sample_weight: np.ndarray | None = None

    @property
    def digest(self) -> str:
        """Short content hash, recorded on each version with its scores."""
        return frame_sha256(self.x, self.y, self.sample_weight)[:16]


@dataclass(frozen=True)
class Score:
    """A version scored on the evaluation data."""

    version: str
    candidate: str
    r2: float
    rmse: float

    def beats(self, other: Score) -> bool:
        """Higher R2 wins; equal R2, lower RMSE wins."""
        return rank_key(self.r2, self.rmse) < rank_key(other.r2, other.rmse)


@dataclass
class PromotionReport:
    """What promotion decided and why, and the resulting state of every version."""

    training_run_id: str
    scores: list[Score]
    staging_version: str | None
    production_before: str | None
    production_after: str | None
    messages: list[str] = field(default_factory=list)
    versions: list[dict[str, str]] = field(default_factory=list)

    @property
    def production_changed(self) -> bool:
        return self.production_before != self.production_after


def latest_training_run_id(client: MlflowClient, experiment_name: str) -> str:
    """The id of the newest finished training (parent) run; a clear error if there is none."""
    experiment = client.get_experiment_by_name(experiment_name)
    runs = []
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{RUN_TYPE_TAG}` = '{TRAINING_RUN_TYPE}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not runs:
        raise UserError(f"no finished training run in experiment {experiment_name}; run train.py first")
    return runs[0].info.run_id


def all_versions(client: MlflowClient, model_name: str) -> list[ModelVersion]:
    """Every version of the registered model, oldest first."""
    versions = client.search_model_versions(f"name = '{model_name}'")
    return sorted(versions, key=lambda version: int(version.version))


def score_version(pipeline: Pipeline, evaluation: EvaluationData) -> tuple[float, float]:
    """R2 and RMSE of a loaded pipeline on the evaluation data."""
    predictions = pipeline.predict(evaluation.x.loc[:, list(FEATURE_NAMES)])
    metrics = regression_metrics(evaluation.y, predictions, sample_weight=evaluation.sample_weight)
    return metrics["r2"], metrics["rmse"]


def promote(client: MlflowClient, settings: Settings, evaluation: EvaluationData, training_run_id: str | None = None) -> PromotionReport:
    """Apply the staging and production gates to the candidates of the latest (or given) training run.

    Idempotent: re-running on the same registry and data changes nothing.
    """
    name = settings.model_name
    run_id = training_run_id or latest_training_run_id(client, settings.experiment_name)
    versions = all_versions(client, name)
    candidates = [version for version in versions if version.tags.get("training_run_id") == run_id]
    if not candidates:
        raise UserError(f"training run {run_id} registered no version of {name}; run train.py first")
    production = get_version_by_alias(client, name, settings.production_alias)
    report = PromotionReport(
        training_run_id=run_id,
        scores=[],
        staging_version=None,
        production_before=str(production.version) if production else None,
        production_after=str(production.version) if production else None,
    )
    say = report.messages.append
    say(f"scoring {len(candidates)} candidate(s) of training run {run_id} on {evaluation.description} ({len(evaluation.y):,} rows)")
    for version in candidates:
        r2, rmse = score_version(load_model_version(client, name, version.version), evaluation)
        score = Score(str(version.version), version.tags.get("candidate", "?"), r2, rmse)
        report.scores.append(score)
        passed = r2 > settings.staging_r2_threshold
        for key, value in {
            STAGING_GATE_TAG: "passed" if passed else "failed",
            "eval_r2": f"{r2:.4f}",
            "eval_rmse": f"{rmse:.4f}",
            "eval_data": evaluation.digest,
        }.items():
            if version.tags.get(key) != value:
                client.set_model_version_tag(name, version.version, key, value)
    ranked = sorted(report.scores, key=lambda s: rank_key(s.r2, s.rmse))
    passed_staging = [s for s in ranked if s.r2 > settings.staging_r2_threshold]

    # Staging: the best candidate past the staging gate.
    current_staging = get_version_by_alias(client, name, settings.staging_alias)
    if passed_staging:
        best_staging = passed_staging[0]
        report.staging_version = best_staging.version
        moved = current_staging is None or str(current_staging.version) != best_staging.version
        if moved:
            client.set_registered_model_alias(name, settings.staging_alias, best_staging.version)
        say(f"{len(passed_staging)} candidate(s) passed the staging gate (R2 > {settings.staging_r2_threshold}); "
            f"'{settings.staging_alias}' {'->' if moved else 'stays at'} version {best_staging.version} ({best_staging.candidate})")
    else:
        report.staging_version = str(current_staging.version) if current_staging else None
        say(f"no candidate passed the staging gate (R2 > {settings.staging_r2_threshold}); '{settings.staging_alias}' unchanged")

    # Production: the best candidate past the production gate, only if it beats the current production.
    best = ranked[0]
    if best.r2 <= settings.production_r2_threshold:
        say(f"production unchanged: the best candidate, version {best.version} ({best.candidate}), has R2 {best.r2:.4f}, "
            f"not above the production gate {settings.production_r2_threshold}")
    elif production is None:
        client.set_registered_model_alias(name, settings.production_alias, best.version)
        report.production_after = best.version
        say(f"'{settings.production_alias}' -> version {best.version} ({best.candidate}, R2 {best.r2:.4f}, RMSE {best.rmse:.4f}); there was no production model")
    elif str(production.version) == best.version:
        say(f"production unchanged: version {best.version} ({best.candidate}) is already production and still the best")
    else:
        current = next((s for s in report.scores if s.version == str(production.version)), None)
        if current is None:
            pipeline = load_model_version(client, name, production.version)
            r2, rmse = score_version(pipeline, evaluation)
            current = Score(str(production.version), production.tags.get("candidate", "?"), r2, rmse)
        if best.beats(current):
            client.set_registered_model_alias(name, settings.production_alias, best.version)
            report.production_after = best.version
            say(f"'{settings.production_alias}' -> version {best.version} ({best.candidate}, R2 {best.r2:.4f}, RMSE {best.rmse:.4f}); "
                f"it beats version {current.version} ({current.candidate}, R2 {current.r2:.4f}, RMSE {current.rmse:.4f}) on the same data")
        else:
            say(f"production unchanged: the best candidate, version {best.version} ({best.candidate}, R2 {best.r2:.4f}, "
                f"RMSE {best.rmse:.4f}), does not beat production version {current.version} ({current.candidate}, "
                f"R2 {current.r2:.4f}, RMSE {current.rmse:.4f}) on the same data")

    report.versions = version_status(client, settings)
    return report


def version_status(client: MlflowClient, settings: Settings) -> list[dict[str, str]]:
    """One row per version: its candidate, aliases, staging gate and last evaluation scores."""
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(settings.model_name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for version in all_versions(client, settings.model_name):
        rows.append(
            {
                "version": version.version,
                "candidate": version.tags.get("candidate", "?"),
                "aliases": ",".join(sorted(aliases.get(str(version.version), []))) or "-",
                "staging_gate": version.tags.get(STAGING_GATE_TAG, "-"),
                "eval_r2": version.tags.get("eval_r2", "-"),
                "eval_rmse": version.tags.get("eval_rmse", "-"),
                "training_run": version.tags.get("training_run_id", "-")[:8],
            }
        )
    return rows
