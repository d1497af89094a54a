"""Retraining that remembers: the production model's own training set plus the new labelled traffic.

The training set is the original training split, the labelled traffic the production model itself
trained on (older rows decaying with age: ``retrain_traffic_half_life_days``), and the new evidence
(labelled districts no run used yet, one row per district). The newest ``retrain_holdout_share`` of the
new evidence is held out: with at least ``gate_min_labelled_rows`` of them it joins the test split as
the gate's evaluation data (test rows the traffic trains on are dropped); with fewer, the gate judges on
the test split alone, so a handful of labels never weighs in the decision.

Old sales are re-expressed at today's price level, as a house-price index does: the new evidence's labels
against the production model's own logged predictions give a price index step (the ratio of their sums,
with a bootstrap interval); when that interval excludes 1, the older labels (the training split, the
remembered traffic, and the test split the gate scores on) are multiplied by it, on top of the index the
production version was trained with. A market move that raised every price by 30 % is learnt from a
thousand labels; without a move the step is 1 and nothing changes.

How much weight traffic gets grows with its effective size and is capped: a share
``retrain_traffic_weight × n / (n + retrain_traffic_ramp_rows)`` of the total, ``n`` being the traffic's
effective number of rows (Kish's, from the decayed weights). A few rows carry almost nothing; after a
market move a thousand fresh labels carry most of the weight, which is what lets the model follow prices
that the 16,512 old rows no longer reflect.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from housing.config.settings import Settings
from housing.data.artifacts import save_json, save_pickle
from housing.data.dataset import Split
from housing.data.digests import frame_sha256
from housing.errors import UserError
from housing.registry import tracking
from housing.registry.promotion import EvaluationData, PromotionReport, promote
from housing.schema import FEATURE_NAMES, TARGET
from housing.store.retrain_evidence import EVAL_ROLE, TRAIN_ROLE, record_used_rows
from housing.store.tables import opened_engine
from housing.training.candidates import load_candidate_specs
from housing.training.comparison import TrainingData, TrainingOutcome, train_and_register
from housing.training.scoring import ratio_bootstrap

logger = logging.getLogger(__name__)

MIN_NEW_ROWS = 10
"""Retraining refuses fewer new labelled districts than this (the monitor asks for far more)."""


@dataclass
class RetrainingSets:
    """What a retraining run trains and is judged on, and where each row came from."""

    training: TrainingData
    evaluation: EvaluationData
    manifest: dict[str, object]
    train_traffic: pd.DataFrame
    """Labelled traffic rows trained on (remembered + new), with ``request_id``."""
    eval_traffic: pd.DataFrame
    """New labelled rows held out to judge the challenger (used by the gate only with enough of them)."""


def age_weights(created_at: pd.Series, now: datetime, half_life_days: float) -> np.ndarray:
    """Weight 0.5 ** (age / half-life) per row: a row as old as the half-life counts half."""
    moments = pd.to_datetime(created_at, utc=True)
    age_days = np.clip(
        (pd.Timestamp(now).tz_convert("UTC") - moments).dt.total_seconds().to_numpy() / 86_400, 0, None
    )
    return np.power(0.5, age_days / half_life_days)


def effective_rows(weights: np.ndarray) -> float:
    """Kish's effective sample size of weighted rows: (Σw)² / Σw²."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(weights.sum() ** 2 / np.square(weights).sum()) if weights.size and weights.any() else 0.0


def traffic_share(effective: float, cap: float, ramp_rows: float) -> float:
    """The share of the total weight traffic gets: grows with its effective size, capped at ``cap``."""
    return cap * effective / (effective + ramp_rows)


def scale_to_share(raw: np.ndarray, share: float, base_weight: float) -> np.ndarray:
    """Traffic weights proportional to ``raw`` whose sum is ``share`` of the total next to ``base_weight``."""
    if raw.size == 0 or share <= 0:
        return np.zeros(raw.size)
    return raw / raw.sum() * (share / (1.0 - share) * base_weight)


@dataclass(frozen=True)
class PriceIndex:
    """The price index step the new evidence shows, and whether it is applied."""

    step: float
    low: float
    high: float
    base: float
    """The index the production version was trained with (1.0 for the original model)."""

    @property
    def applied_step(self) -> float:
        """The step when its interval excludes 1 (a real move), else 1."""
        return self.step if self.low > 1.0 or self.high < 1.0 else 1.0

    @property
    def level(self) -> float:
        """The index the new training set is expressed in: the production's times the applied step."""
        return self.base * self.applied_step


def price_index(
    labels: np.ndarray,
    predictions: np.ndarray,
    *,
    base: float,
    samples: int,
    confidence: float,
    seed: int = 0,
) -> PriceIndex:
    """Σ labels / Σ predictions of the new evidence, with its percentile bootstrap interval (pure)."""
    labels, predictions = np.asarray(labels, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    if labels.size == 0 or predictions.sum() <= 0:
        return PriceIndex(1.0, 1.0, 1.0, base)
    low, high = ratio_bootstrap(labels, predictions, samples=samples, confidence=confidence, seed=seed)
    return PriceIndex(float(labels.sum() / predictions.sum()), low, high, base)


def _combine(
    parts: list[tuple[pd.DataFrame, pd.Series, np.ndarray]],
) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    features = list(FEATURE_NAMES)
    parts = [part for part in parts if len(part[0])] or parts[:1]
    x = pd.concat([part[0][features] for part in parts], ignore_index=True)
    y = pd.concat([part[1] for part in parts], ignore_index=True).astype(float)
    return x, y, np.concatenate([part[2] for part in parts])


def build_retraining_sets(
    split: Split,
    remembered: pd.DataFrame,
    new: pd.DataFrame,
    settings: Settings,
    *,
    base_source: str,
    now: datetime,
    base_index: float = 1.0,
    max_price_step: float | None = None,
) -> RetrainingSets:
    """Training = train split + remembered traffic (decayed) + older new evidence; evaluation = test split
    (+ the newest new evidence, when there is enough of it). Pure: frames in, sets out.

    ``remembered``: the labelled traffic the production model trained on; ``new``: new labelled districts,
    one row each. Both with features, ``MedHouseVal``, ``request_id`` and ``created_at``; ``new`` also with
    the served ``prediction`` (for the price index). ``base_index``: the price index production was trained
    with.
    """
    if len(new) < MIN_NEW_ROWS:
        raise UserError(f"only {len(new)} new labelled districts; retraining needs at least {MIN_NEW_ROWS}")
    new = new.sort_values("created_at", kind="stable").reset_index(drop=True)
    held_out = max(1, math.ceil(len(new) * settings.retrain_holdout_share))
    index = _index_of(new.iloc[:-held_out], base_index, settings)
    step = index.applied_step
    if max_price_step is not None and max(step, 1 / step) > max_price_step * (1 + 1e-9):
        raise UserError(
            f"the new labels re-price old ones by x{step:.4f}, more than the x{max_price_step:.4f} a retrain"
            " may apply (HOUSING_RETRAIN_MAX_PRICE_STEP, or a person's approval with monitor.py"
            " --approve-price-step)"
        )
    remembered = remembered.assign(**{TARGET.name: remembered[TARGET.name] * index.applied_step})
    split = Split(split.x_train, split.x_test, split.y_train * index.level, split.y_test * index.level)
    traffic = pd.concat([part for part in (remembered, new.iloc[:-held_out]) if len(part)], ignore_index=True)
    eval_traffic = new.iloc[-held_out:].reset_index(drop=True)

    raw = age_weights(traffic["created_at"], now, settings.retrain_traffic_half_life_days)
    share = traffic_share(
        effective_rows(raw), settings.retrain_traffic_weight, settings.retrain_traffic_ramp_rows
    )
    x_train, y_train, train_weight = _combine(
        [
            (split.x_train, split.y_train, np.ones(len(split.x_train))),
            (traffic, traffic[TARGET.name], scale_to_share(raw, share, len(split.x_train))),
        ]
    )
    evaluation, judged, eval_share, kept = _evaluation_rows(split, traffic, eval_traffic, held_out, settings)
    sha = frame_sha256(x_train, y_train, train_weight)
    counts = {
        "rows": len(x_train),
        "sha256": sha,
        "train_split_rows": len(split.x_train),
        "remembered_traffic_rows": len(remembered),
        "new_traffic_train_rows": len(new) - held_out,
        "traffic_eval_rows": judged,
        "held_out_new_rows": held_out,
        "test_rows_kept": kept,
        "traffic_train_share": share,
        "traffic_eval_share": eval_share,
    }
    provenance, manifest = _describe(counts, traffic, index)
    training = TrainingData(
        x_train=x_train,
        y_train=y_train,
        x_test=evaluation.x,
        y_test=evaluation.y,
        source=f"{base_source} + prediction log",
        data_sha256=sha,
        train_weight=train_weight,
        test_weight=evaluation.sample_weight,
        provenance=provenance,
        reference_rows=np.arange(len(x_train)) < len(split.x_train),  # traffic never a neighbour target
    )
    return RetrainingSets(training, evaluation, manifest, traffic, eval_traffic)


def _evaluation_rows(
    split: Split, traffic: pd.DataFrame, eval_traffic: pd.DataFrame, held_out: int, settings: Settings
) -> tuple[EvaluationData, int, float, int]:
    """The gate's evaluation rows: the test split without the districts training now sees, plus the held-out
    new evidence when there is enough of it, weighted like traffic in training. Returns them with the
    number of traffic rows judged on, their share of the weight and the number of test rows kept."""
    keep = ~pd.MultiIndex.from_frame(split.x_test[list(FEATURE_NAMES)]).isin(
        pd.MultiIndex.from_frame(traffic[list(FEATURE_NAMES)])
    )
    x_test, y_test = split.x_test[keep], split.y_test[keep]
    judged = eval_traffic if len(eval_traffic) >= settings.gate_min_labelled_rows else eval_traffic.iloc[0:0]
    eval_share = traffic_share(
        float(len(judged)), settings.retrain_traffic_weight, settings.retrain_traffic_ramp_rows
    )
    x_eval, y_eval, eval_weight = _combine(
        [
            (x_test, y_test, np.ones(len(x_test))),
            (judged, judged[TARGET.name], scale_to_share(np.ones(len(judged)), eval_share, len(x_test))),
        ]
    )
    traffic_note = (
        f" + the newest {len(judged):,} new labelled production rows ({eval_share:.0%} of the weight)"
        if len(judged)
        else (
            f" alone ({held_out:,} new labelled rows are fewer than {settings.gate_min_labelled_rows:,}: not"
            " judged on)"
        )
    )
    evaluation = EvaluationData(
        x_eval,
        y_eval,
        sample_weight=eval_weight,
        description=f"the test split ({int(keep.sum()):,} rows){traffic_note}",
    )
    return evaluation, len(judged), eval_share, int(keep.sum())


def _describe(
    counts: dict[str, Any], traffic: pd.DataFrame, index: PriceIndex
) -> tuple[dict[str, str], dict[str, Any]]:
    """The sets' provenance (tags of the training run) and their manifest (saved beside the rows)."""
    provenance = {
        "training_data": (
            f"train split ({counts['train_split_rows']:,} rows) + {counts['remembered_traffic_rows']:,}"
            f" remembered and {counts['new_traffic_train_rows']:,} new labelled production rows"
        ),
        "traffic_rows": str(len(traffic)),
        "traffic_weight_share": f"{counts['traffic_train_share']:.4f}",
        "price_index": f"{index.level:.6f}",
        "price_index_step": (
            f"{index.step:.4f} [{index.low:.4f}, {index.high:.4f}]"
            + ("" if index.applied_step != 1.0 else " (not applied)")
        ),
        "traffic_from": str(traffic["created_at"].min()) if len(traffic) else "",
        "traffic_to": str(traffic["created_at"].max()) if len(traffic) else "",
    }
    manifest = {
        **counts,
        "provenance": provenance,
        "price_index": index.level,
        "price_index_step": index.step,
        "price_index_interval": [index.low, index.high],
    }
    return provenance, manifest


def _index_of(rows: pd.DataFrame, base_index: float, settings: Settings) -> PriceIndex:
    if "prediction" not in rows:
        return PriceIndex(1.0, 1.0, 1.0, base_index)
    return price_index(
        rows[TARGET.name].to_numpy(),
        rows["prediction"].to_numpy(),
        base=base_index,
        samples=settings.gate_bootstrap_samples,
        confidence=settings.gate_confidence,
        seed=settings.random_state,
    )


@dataclass
class RetrainOutcome:
    """A finished retraining: the comparison run, what promotion decided, and where the data was saved."""

    training: TrainingOutcome
    promotion: PromotionReport
    data_dir: Path


def retrain(
    settings: Settings,
    split: Split,
    remembered: pd.DataFrame,
    new: pd.DataFrame,
    *,
    base_source: str,
    base_index: float = 1.0,
    max_price_step: float | None = None,
) -> RetrainOutcome:
    """Train every candidate on the new data, register them, record which traffic rows the run used, and run
    promote's gates on the new evaluation data."""
    sets = build_retraining_sets(
        split,
        remembered,
        new,
        settings,
        base_source=base_source,
        now=datetime.now(UTC),
        base_index=base_index,
        max_price_step=max_price_step,
    )
    data_dir = settings.artifacts_dir / "retraining" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name, part in {
        "X_train": sets.training.x_train,
        "y_train": sets.training.y_train,
        "X_eval": sets.training.x_test,
        "y_eval": sets.training.y_test,
    }.items():
        save_pickle(part, data_dir / f"{name}.pkl")
    save_pickle(sets.training.train_weight, data_dir / "train_weight.pkl")
    save_json(sets.manifest, data_dir / "manifest.json")
    logger.info(
        "retraining on %s (sha256 %s)",
        sets.training.provenance["training_data"],
        sets.training.data_sha256[:12],
    )
    specs = load_candidate_specs(settings.candidates_path, settings.candidates)
    outcome = train_and_register(settings, sets.training, specs)
    with opened_engine(
        settings.log_database_url
    ) as engine:  # recorded before promotion: even a rejected challenger has used this evidence
        record_used_rows(engine, outcome.parent_run_id, sets.train_traffic, TRAIN_ROLE)
        record_used_rows(engine, outcome.parent_run_id, sets.eval_traffic, EVAL_ROLE)
    client = tracking.connect(settings)
    report = promote(
        client,
        settings,
        sets.evaluation,
        training_run_id=outcome.parent_run_id,
        command="monitor.py (retrain)",
    )
    return RetrainOutcome(outcome, report, data_dir)
