"""Retraining on the training split plus the labelled production traffic, through promote's gate.

The labelled rows are split by time: the older part joins the training data, the newest part
(``retrain_holdout_share``) is held out and joins the test split as evaluation data, so a candidate is
compared with the current production on data that includes recent traffic it never trained on. Test-
split rows that the traffic also sent for training are dropped from the evaluation. Traffic rows get
``retrain_traffic_weight`` of the total weight, both in training and in evaluation: after a market move
the recent labels are the truth, and a few thousand of them must be able to outweigh 16,512 old ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from housing import tracking
from housing.artifacts import save_json, save_pickle
from housing.candidates import load_candidate_specs
from housing.config import Settings
from housing.data import Split
from housing.digests import frame_sha256
from housing.errors import UserError
from housing.registry import EvaluationData, PromotionReport, promote
from housing.schema import FEATURE_NAMES, TARGET
from housing.training import TrainingData, TrainingOutcome, train_and_register

logger = logging.getLogger(__name__)


@dataclass
class RetrainingSets:
    """What a retraining run trains and is judged on, and where each row came from."""

    training: TrainingData
    evaluation: EvaluationData
    manifest: dict[str, object]


def _share_weight(share: float, base_weight: float, rows: int) -> float:
    """Weight per row so that ``rows`` rows carry ``share`` of the total next to ``base_weight``."""
    return share / (1.0 - share) * base_weight / rows


def build_retraining_sets(split: Split, labelled: pd.DataFrame, settings: Settings, *, base_source: str) -> RetrainingSets:
    """Training = train split + older labelled traffic; evaluation = test split + newest labelled traffic.

    ``labelled``: logged predictions with their true value (features, ``MedHouseVal``, ``created_at``).
    """
    labelled = labelled.sort_values("created_at", kind="stable").reset_index(drop=True)
    if len(labelled) < 10:
        raise UserError(f"only {len(labelled)} labelled production rows; retraining needs at least 10")
    held_out = max(1, math.ceil(len(labelled) * settings.retrain_holdout_share))
    recent_train, recent_eval = labelled.iloc[:-held_out], labelled.iloc[-held_out:]
    features = list(FEATURE_NAMES)

    x_train = pd.concat([split.x_train[features], recent_train[features]], ignore_index=True)
    y_train = pd.concat([split.y_train, recent_train[TARGET.name]], ignore_index=True).astype(float)
    traffic_weight = _share_weight(settings.retrain_traffic_weight, len(split.x_train), len(recent_train))
    train_weight = np.concatenate([np.ones(len(split.x_train)), np.full(len(recent_train), traffic_weight)])

    # A test row the traffic also sent for training must not be scored: drop exact feature matches.
    trained = pd.MultiIndex.from_frame(recent_train[features])
    keep = ~pd.MultiIndex.from_frame(split.x_test[features]).isin(trained)
    x_test, y_test = split.x_test[features][keep], split.y_test[keep]
    x_eval = pd.concat([x_test, recent_eval[features]], ignore_index=True)
    y_eval = pd.concat([y_test, recent_eval[TARGET.name]], ignore_index=True).astype(float)
    eval_traffic_weight = _share_weight(settings.retrain_traffic_weight, len(x_test), len(recent_eval))
    eval_weight = np.concatenate([np.ones(len(x_test)), np.full(len(recent_eval), eval_traffic_weight)])

    sha = frame_sha256(x_train, y_train, train_weight)
    provenance = {
        "training_data": f"train split ({len(split.x_train):,} rows) + {len(recent_train):,} labelled production rows",
        "traffic_rows": str(len(recent_train)),
        "traffic_row_weight": f"{traffic_weight:.4f}",
        "traffic_from": str(recent_train["created_at"].min()) if len(recent_train) else "",
        "traffic_to": str(recent_train["created_at"].max()) if len(recent_train) else "",
    }
    manifest = {
        "rows": len(x_train),
        "sha256": sha,
        "train_split_rows": len(split.x_train),
        "traffic_train_rows": len(recent_train),
        "traffic_eval_rows": len(recent_eval),
        "test_rows_kept": int(keep.sum()),
        "traffic_weight_share": settings.retrain_traffic_weight,
        "provenance": provenance,
    }
    training = TrainingData(
        x_train=x_train, y_train=y_train, x_test=x_eval, y_test=y_eval, source=f"{base_source} + prediction log",
        data_sha256=sha, train_weight=train_weight, test_weight=eval_weight, provenance=provenance,
    )
    evaluation = EvaluationData(
        x_eval, y_eval, sample_weight=eval_weight,
        description=f"the test split ({int(keep.sum()):,} rows) + the newest {len(recent_eval):,} labelled production rows "
        f"({settings.retrain_traffic_weight:.0%} of the weight)",
    )
    return RetrainingSets(training, evaluation, manifest)


@dataclass
class RetrainOutcome:
    """A finished retraining: the comparison run, what promotion decided, and where the data was saved."""

    training: TrainingOutcome
    promotion: PromotionReport
    data_dir: Path


def retrain(settings: Settings, split: Split, labelled: pd.DataFrame, *, base_source: str) -> RetrainOutcome:
    """Train every candidate on the new data, register them, and run promote's gates on the new evaluation data."""
    sets = build_retraining_sets(split, labelled, settings, base_source=base_source)
    data_dir = settings.artifacts_dir / "retraining" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name, part in {"X_train": sets.training.x_train, "y_train": sets.training.y_train, "X_eval": sets.training.x_test,
                       "y_eval": sets.training.y_test}.items():
        save_pickle(part, data_dir / f"{name}.pkl")
    save_pickle(sets.training.train_weight, data_dir / "train_weight.pkl")
    save_json(sets.manifest, data_dir / "manifest.json")
    logger.info("retraining on %s (sha256 %s)", sets.training.provenance["training_data"], sets.training.data_sha256[:12])
    specs = load_candidate_specs(settings.candidates_path, settings.candidates)
    outcome = train_and_register(settings, sets.training, specs)
    client = tracking.connect(settings)
    report = promote(client, settings, sets.evaluation, training_run_id=outcome.parent_run_id)
    return RetrainOutcome(outcome, report, data_dir)
