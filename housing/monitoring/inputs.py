"""What a monitor round reads: the serving version, the window of predictions it served, the data it learnt
from (its drift reference), rows it never trained on (its error reference), its loss estimator and the new
evidence."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from sklearn.pipeline import Pipeline
from sqlalchemy import Engine

from housing.config.settings import Settings
from housing.data.dataset import Split, load_split
from housing.data.digests import row_digests
from housing.errors import UserError
from housing.monitoring.drift_report import (
    reference_frame,
)
from housing.monitoring.loss_estimation import (
    LossEstimator,
    load_loss_estimator,
)
from housing.monitoring.retraining import (
    age_weights,
    effective_rows,
    scale_to_share,
    traffic_share,
)
from housing.registry import tracking
from housing.registry.versions import get_version_by_alias, load_version
from housing.schema import FEATURE_NAMES, TARGET
from housing.store.labellers import active_digests
from housing.store.log_reads import read_window
from housing.store.retrain_evidence import (
    EVAL_ROLE,
    Evidence,
    base_districts,
    new_evidence,
    trained_rows,
    used_districts,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


def serving_version(client: MlflowClient, settings: Settings) -> ModelVersion:
    """The version the production alias names; one sentence when there is none."""
    version = get_version_by_alias(client, settings.model_name, settings.production_alias)
    if version is None:
        raise UserError(
            f"no version of {settings.model_name} has the alias '{settings.production_alias}'; run the"
            " pipeline first"
        )
    return version


@dataclass(frozen=True)
class HeldOut:
    """Labelled rows the serving version never trained on, and what they are (said beside every reference
    error)."""

    x: pd.DataFrame
    y: pd.Series
    description: str


def held_out_data(
    engine: Engine, split: Split, training_run_id: str, remembered: pd.DataFrame, price_index: float
) -> HeldOut:
    """The original model's held-out data is the test split; a retrained version's is its evaluation data: the
    test split at its price index without the districts it trained on, plus the labelled traffic its
    retraining held out.
    """
    held = trained_rows(engine, training_run_id, EVAL_ROLE) if training_run_id else remembered.iloc[0:0]
    if remembered.empty and held.empty:
        return HeldOut(
            split.x_test, split.y_test * price_index, f"held-out: the test split ({len(split.x_test):,} rows)"
        )
    keep = (
        ~row_digests(split.x_test).isin(set(row_digests(remembered)) if len(remembered) else set()).to_numpy()
    )
    x = pd.concat([split.x_test.loc[keep, list(FEATURE_NAMES)], held[list(FEATURE_NAMES)]], ignore_index=True)
    y = pd.concat([split.y_test[keep] * price_index, held[TARGET.name]], ignore_index=True).astype(float)
    return HeldOut(
        x,
        y,
        f"held-out: its evaluation data ({int(keep.sum()):,} test-split rows at price index {price_index:.3f}"
        f" + {len(held):,} labelled traffic rows its retraining held out)",
    )


def production_reference(
    split: Split, remembered: pd.DataFrame, model: Pipeline, settings: Settings, held_out: HeldOut
) -> pd.DataFrame:
    """The reference of the production version: drift against the data it was trained on (the training split,
    plus the labelled traffic a retrained version learnt from, drawn in proportion to the weight it had in
    training); the error against its predictions on ``held_out`` rows
    (housing.monitoring.drift_report.reference_frame).
    """
    if remembered.empty:
        return reference_frame(split.x_train, held_out.x, held_out.y, model)
    raw = age_weights(remembered["created_at"], datetime.now(UTC), settings.retrain_traffic_half_life_days)
    share = traffic_share(
        effective_rows(raw), settings.retrain_traffic_weight, settings.retrain_traffic_ramp_rows
    )
    weights = np.concatenate([np.ones(len(split.x_train)), scale_to_share(raw, share, len(split.x_train))])
    x = pd.concat([split.x_train[list(FEATURE_NAMES)], remembered[list(FEATURE_NAMES)]], ignore_index=True)
    picks = np.random.default_rng(settings.random_state).choice(
        len(x), size=len(split.x_train), p=weights / weights.sum()
    )
    return reference_frame(x.iloc[picks], held_out.x, held_out.y, model)


@dataclass
class MonitorInputs:
    """What one round reads: the serving version, its window, its training data and the evidence."""

    version: ModelVersion
    window: pd.DataFrame
    split: Split
    remembered: pd.DataFrame
    reference: pd.DataFrame
    evidence: Evidence
    price_index: float
    """The price index the serving version was trained with (1.0 for the original model)."""
    error_reference: str = ""
    """What the reference error figures were measured on (held-out rows, said with the figures)."""
    loss_estimator: LossEstimator | None = None
    """The serving version's loss estimator (None: it has none)."""
    estimator_note: str = ""
    """Why there is no estimate, when there is none."""


def read_inputs(settings: Settings, engine: Engine, since: datetime | None) -> MonitorInputs:
    """Read the serving version, the predictions it served, the data it learnt from, and the new evidence."""
    client = tracking.connect(settings)
    version = serving_version(client, settings)
    window = read_window(
        engine,
        last_n=settings.monitor_window,
        since=since or datetime.now(UTC) - timedelta(hours=settings.monitor_window_hours),
        model_version=str(version.version),
        client_share=settings.monitor_client_share,
    )
    split = load_split(settings.split_dir)
    remembered = trained_rows(engine, version.tags.get("training_run_id", ""))
    index = float(client.get_run(version.run_id).data.tags.get("price_index", "1")) if version.run_id else 1.0
    held_out = held_out_data(engine, split, version.tags.get("training_run_id", ""), remembered, index)
    reference = production_reference(split, remembered, load_version(client, version), settings, held_out)
    estimator, note = serving_estimator(client, version)
    return MonitorInputs(
        version,
        window,
        split,
        remembered,
        reference,
        current_evidence(engine, window, split, settings.labeller_max_share),
        index,
        held_out.description,
        estimator,
        note,
    )


def serving_estimator(client: MlflowClient, version: ModelVersion) -> tuple[LossEstimator | None, str]:
    """The serving version's loss estimator, or None and why (a version trained before loss estimation, or one
    whose estimator does not load safely: the round goes on without an estimate)."""
    try:
        estimator = load_loss_estimator(client, version)
    except UserError as error:
        logger.warning("%s", error)
        return None, str(error)
    if estimator is None:
        return (
            None,
            (
                f"version {version.version} has no loss estimator (trained before loss estimation): no error"
                " estimated without labels"
            ),
        )
    return estimator, ""


def current_evidence(engine: Engine, window: pd.DataFrame, split: Split, labeller_share: float) -> Evidence:
    """The window's labelled districts that neither the training split nor any retraining run has used; once
    named labellers are registered, no labeller makes up more than ``labeller_share`` of them."""
    labelled = window[window[TARGET.name].notna()]
    share = labeller_share if active_digests(engine) else None
    return new_evidence(labelled, used_districts(engine) | base_districts(split.x_train), share)
