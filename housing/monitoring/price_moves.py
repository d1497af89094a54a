"""Price moves: the price-index step the new labels show against the served predictions, the largest step a
retrain may apply on its own, and a person's approval of a larger one.

A retrain re-expresses old labels at today's price level by the step the new evidence shows
(:mod:`housing.monitoring.retraining`). Labels come from labellers, so a step beyond
``retrain_max_price_step`` is not applied on their word alone: the round alerts instead
(:mod:`housing.monitoring.retrain_policy`), and a person who checked the market approves the step with
``monitor.py --approve-price-step``, recorded in the alias ledger for the production version it applies to.
"""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine

from housing.config.settings import Settings
from housing.errors import UserError
from housing.monitoring.inputs import serving_version
from housing.monitoring.retrain_policy import PriceMove
from housing.monitoring.retraining import MIN_NEW_ROWS, price_index
from housing.registry import tracking
from housing.registry.ledger import approved_price_step, record_price_approval
from housing.schema import TARGET
from housing.store.tables import opened_engine


def allowed_price_step(settings: Settings, engine: Engine, production_version: str) -> float:
    """The largest price step a retrain of ``production_version`` may apply: the setting, or a person's
    larger approval for this version."""
    approved = approved_price_step(engine, settings.model_name, production_version)
    return max(settings.retrain_max_price_step, approved or 0.0)


def price_move_of(rows: pd.DataFrame, settings: Settings, allowed: float) -> PriceMove | None:
    """The price step the new labels show against the served predictions (None: too few of them)."""
    if len(rows) < MIN_NEW_ROWS or "prediction" not in rows:
        return None
    index = price_index(
        rows[TARGET.name].to_numpy(),
        rows["prediction"].to_numpy(),
        base=1.0,
        samples=settings.gate_bootstrap_samples,
        confidence=settings.gate_confidence,
        seed=settings.random_state,
    )
    return PriceMove(index.step, index.low, index.high, allowed)


def approve_price_step(settings: Settings, step: float) -> str:
    """Record a person's approval of price steps up to ``step`` for retrains of the current production
    version; the sentence that says so."""
    if not 1 / 3 <= step <= 3:
        raise UserError(f"a price step of {step:g} is not a market move (approve a step between 1/3 and 3)")
    client = tracking.connect(settings)
    version = str(serving_version(client, settings).version)
    with opened_engine(settings.log_database_url) as engine:
        record_price_approval(engine, settings.model_name, step, version, "monitor.py --approve-price-step")
    return (
        f"approved: retrains of production version {version} may re-price old labels by up to x"
        f"{max(step, 1 / step):.4f} (recorded in the ledger)"
    )
