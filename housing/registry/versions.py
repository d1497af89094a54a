"""The model registry: loading versions safely, finding the latest candidates, scoring them, moving aliases.

Aliases, not deprecated stages: ``staging`` names the best candidate of the latest training run that
passed the staging gate; ``production`` names the served version and moves only when a candidate beats
the current production on the same evaluation data, scored from the models themselves. Which version
gets which alias is decided by the pure policy in :mod:`housing.registry.promotion_policy`; :func:`promote` reads the
registry, scores, calls that policy and applies its decision.
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
from housing.data.digests import frame_sha256
from housing.errors import UserError
from housing.registry.model_files import load_skops_model
from housing.registry.production import move_production
from housing.registry.promotion_policy import (
    GateEvidence,
    PromotionDecision,
    Score,
    decide_promotion,
    for_shadow_mode,
    paired_bootstrap,
    passes_staging_gate,
    production_score_needed,
    ranked,
)
from housing.registry.tracking import RUN_TYPE_TAG, TRAINING_RUN_TYPE, quiet_mlflow
from housing.schema import FEATURE_NAMES
from housing.training.scoring import regression_metrics

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)

STAGING_GATE_TAG = "staging_gate"


def get_version_by_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException  # mlflow costs ~2 s to import: paid on first use, not on import

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

    Only :data:`housing.registry.model_files.SKOPS_TRUSTED_TYPES` are trusted. That list comes from this code, not from
    the model's own MLmodel file, so a tampered model can't widen it (and no pickle is ever loaded).
    """
    import mlflow  # mlflow costs ~2 s to import: paid on first use, not on import

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
    from mlflow import MlflowClient  # mlflow costs ~2 s to import: paid on first use, not on import

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
        """Whether promotion moved the production alias."""
        return self.production_before != self.production_after


def latest_training_run_id(client: MlflowClient, experiment_name: str) -> str:
    """The id of the newest finished training (parent) run; a clear error if there is none."""
    experiment = client.get_experiment_by_name(experiment_name)
    runs: list[Run] = []
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


def score_model_version(client: MlflowClient, version: ModelVersion, evaluation: EvaluationData) -> Score:
    """Load one registered version and score it on the evaluation data (with its per-row squared errors)."""
    pipeline = load_model_version(client, version.name, version.version)
    predictions = np.asarray(pipeline.predict(evaluation.x.loc[:, list(FEATURE_NAMES)]), dtype=np.float64)
    metrics = regression_metrics(evaluation.y, predictions, sample_weight=evaluation.sample_weight)
    squared_errors = np.square(evaluation.y.to_numpy(dtype=np.float64) - predictions)
    return Score(str(version.version), version.tags.get("candidate", "?"), metrics["r2"], metrics["rmse"], squared_errors)


def gate_evidence(scores: list[Score], production: Score | None, evaluation: EvaluationData, settings: Settings) -> GateEvidence | None:
    """The paired evidence of the best candidate against production on the evaluation rows (None when
    there is no production to compare with, or the best candidate is production)."""
    best = ranked(scores)[0]
    if production is None or production.version == best.version or production.squared_errors is None or best.squared_errors is None:
        return None
    return paired_bootstrap(production.squared_errors, best.squared_errors, evaluation.sample_weight,
                            samples=settings.gate_bootstrap_samples, confidence=settings.gate_confidence,
                            seed=settings.random_state)


def score_candidates(client: MlflowClient, candidates: list[ModelVersion], evaluation: EvaluationData,
                     staging_r2_threshold: float) -> list[Score]:
    """Score every candidate and record on each version its scores, the evaluation data and its staging gate."""
    scores = []
    for version in candidates:
        score = score_model_version(client, version, evaluation)
        scores.append(score)
        for key, value in {
            STAGING_GATE_TAG: "passed" if passes_staging_gate(score.r2, staging_r2_threshold) else "failed",
            "eval_r2": f"{score.r2:.4f}",
            "eval_rmse": f"{score.rmse:.4f}",
            "eval_data": evaluation.digest,
        }.items():
            if version.tags.get(key) != value:
                client.set_model_version_tag(version.name, version.version, key, value)
    return scores


def apply_promotion(client: MlflowClient, settings: Settings, decision: PromotionDecision, *, expected_production: str | None,
                    command: str, evidence: GateEvidence | None) -> None:
    """Point the aliases where the decision says; an alias that does not move is not touched. Production
    moves by compare-and-set against ``expected_production`` and is recorded in the production ledger."""
    if decision.move_staging and decision.staging_version is not None:
        client.set_registered_model_alias(settings.model_name, settings.staging_alias, decision.staging_version)
    if decision.move_production and decision.production_version is not None:
        move_production(client, settings, expected=expected_production, to_version=decision.production_version, command=command,
                        reason=decision.messages[-1], evidence={"gate": evidence.as_dict() if evidence else None})


def promote(client: MlflowClient, settings: Settings, evaluation: EvaluationData, training_run_id: str | None = None, *,
            command: str = "promote.py") -> PromotionReport:
    """Apply the staging and production gates to the candidates of the latest (or given) training run.

    Reads the registry, scores the candidates, lets :func:`housing.registry.promotion_policy.decide_promotion` decide,
    applies the decision. Idempotent: re-running on the same registry and data changes nothing.
    """
    name = settings.model_name
    run_id = training_run_id or latest_training_run_id(client, settings.experiment_name)
    candidates = [version for version in all_versions(client, name) if version.tags.get("training_run_id") == run_id]
    if not candidates:
        raise UserError(f"training run {run_id} registered no version of {name}; run train.py first")
    production = get_version_by_alias(client, name, settings.production_alias)
    production_version = str(production.version) if production else None
    scoring = (f"scoring {len(candidates)} candidate(s) of training run {run_id} on {evaluation.description} "
               f"({len(evaluation.y):,} rows)")
    scores = score_candidates(client, candidates, evaluation, settings.staging_r2_threshold)
    staging = get_version_by_alias(client, name, settings.staging_alias)
    production_score = next((score for score in scores if score.version == production_version), None)
    if production is not None and production_score_needed(scores, production_version, settings.production_r2_threshold):
        production_score = score_model_version(client, production, evaluation)
    evidence = gate_evidence(scores, production_score, evaluation, settings)
    decision = decide_promotion(
        scores,
        production_version=production_version,
        current_staging=str(staging.version) if staging else None,
        staging_r2_threshold=settings.staging_r2_threshold,
        production_r2_threshold=settings.production_r2_threshold,
        staging_alias=settings.staging_alias,
        production_alias=settings.production_alias,
        production=production_score,
        evidence=evidence,
    )
    if settings.promotion_mode == "shadow":
        decision = for_shadow_mode(decision, production_version, settings.staging_alias)
    apply_promotion(client, settings, decision, expected_production=production_version, command=command, evidence=evidence)
    return PromotionReport(
        training_run_id=run_id,
        scores=scores,
        staging_version=decision.staging_version,
        production_before=production_version,
        production_after=decision.production_version,
        messages=[scoring, *decision.messages],
        versions=version_status(client, settings),
    )


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
