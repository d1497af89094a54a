"""Promotion: score the candidates of a training run, let the policy decide, move the aliases it names.

Reads the registry, scores every candidate *from its registered model* on the evaluation data, calls the pure
policy (:func:`housing.registry.promotion_policy.decide_promotion`) and applies its decision: ``staging`` is
set directly, ``production`` moves only by compare-and-set and is recorded in the production ledger
(:mod:`housing.registry.production`). Idempotent: re-running on the same registry and data changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from housing.config.settings import Settings
from housing.data.digests import frame_sha256
from housing.errors import UserError
from housing.registry.production import move_production, move_staging
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
from housing.registry.versions import (
    STAGING_GATE_TAG,
    all_versions,
    get_version_by_alias,
    latest_training_run_id,
    load_model_version,
    version_status,
)
from housing.schema import FEATURE_NAMES
from housing.training.scoring import regression_metrics

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)


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


def score_model_version(client: MlflowClient, version: ModelVersion, evaluation: EvaluationData) -> Score:
    """Load one registered version and score it on the evaluation data (with its per-row squared errors)."""
    pipeline = load_model_version(client, version.name, version.version)
    predictions = np.asarray(pipeline.predict(evaluation.x.loc[:, list(FEATURE_NAMES)]), dtype=np.float64)
    metrics = regression_metrics(evaluation.y, predictions, sample_weight=evaluation.sample_weight)
    squared_errors = np.square(evaluation.y.to_numpy(dtype=np.float64) - predictions)
    return Score(
        str(version.version),
        version.tags.get("candidate", "?"),
        metrics["r2"],
        metrics["rmse"],
        squared_errors,
    )


def gate_evidence(
    scores: list[Score], production: Score | None, evaluation: EvaluationData, settings: Settings
) -> GateEvidence | None:
    """The paired evidence of the best candidate against production on the evaluation rows (None when
    there is no production to compare with, or the best candidate is production)."""
    best = ranked(scores)[0]
    if (
        production is None
        or production.version == best.version
        or production.squared_errors is None
        or best.squared_errors is None
    ):
        return None
    return paired_bootstrap(
        production.squared_errors,
        best.squared_errors,
        evaluation.sample_weight,
        samples=settings.gate_bootstrap_samples,
        confidence=settings.gate_confidence,
        seed=settings.random_state,
    )


def score_candidates(
    client: MlflowClient,
    candidates: list[ModelVersion],
    evaluation: EvaluationData,
    staging_r2_threshold: float,
) -> list[Score]:
    """Score every candidate and record on each version its scores, the evaluation data and its staging
    gate."""
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


def apply_promotion(
    client: MlflowClient,
    settings: Settings,
    decision: PromotionDecision,
    *,
    expected_production: str | None,
    command: str,
    evidence: GateEvidence | None,
) -> None:
    """Point the aliases where the decision says; an alias that does not move is not touched. Production
    moves by compare-and-set against ``expected_production`` and is recorded in the production ledger."""
    if decision.move_staging and decision.staging_version is not None:
        move_staging(
            client,
            settings,
            decision.staging_version,
            command=command,
            reason=next(
                (message for message in decision.messages if settings.staging_alias in message),
                "the staging gate's best candidate",
            ),
        )
    if decision.move_production and decision.production_version is not None:
        move_production(
            client,
            settings,
            expected=expected_production,
            to_version=decision.production_version,
            command=command,
            reason=decision.messages[-1],
            evidence={"gate": evidence.as_dict() if evidence else None},
        )


def promote(
    client: MlflowClient,
    settings: Settings,
    evaluation: EvaluationData,
    training_run_id: str | None = None,
    *,
    command: str = "promote.py",
) -> PromotionReport:
    """Apply the staging and production gates to the candidates of the latest (or given) training run.

    Reads the registry, scores the candidates, lets :func:`housing.registry.promotion_policy.decide_promotion`
    decide, applies the decision. Idempotent: re-running on the same registry and data changes nothing.
    """
    name = settings.model_name
    run_id = training_run_id or latest_training_run_id(client, settings.experiment_name)
    candidates = [
        version for version in all_versions(client, name) if version.tags.get("training_run_id") == run_id
    ]
    if not candidates:
        raise UserError(f"training run {run_id} registered no version of {name}; run train.py first")
    production = get_version_by_alias(client, name, settings.production_alias)
    production_version = str(production.version) if production else None
    scoring = (
        f"scoring {len(candidates)} candidate(s) of training run {run_id} on {evaluation.description} "
        f"({len(evaluation.y):,} rows)"
    )
    scores = score_candidates(client, candidates, evaluation, settings.staging_r2_threshold)
    staging = get_version_by_alias(client, name, settings.staging_alias)
    production_score = next((score for score in scores if score.version == production_version), None)
    if production is not None and production_score_needed(
        scores, production_version, settings.production_r2_threshold
    ):
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
    apply_promotion(
        client, settings, decision, expected_production=production_version, command=command, evidence=evidence
    )
    return PromotionReport(
        training_run_id=run_id,
        scores=scores,
        staging_version=decision.staging_version,
        production_before=production_version,
        production_after=decision.production_version,
        messages=[scoring, *decision.messages],
        versions=version_status(client, settings),
    )
