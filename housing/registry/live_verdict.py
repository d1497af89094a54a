"""Promotion from live evidence: champion and challenger judged on the same labelled requests, and the verdict
applied.

While ``staging`` names another version than ``production``, the API scores every request with both
(:mod:`housing.serving.shadow`), and the labels come back through /feedback. :func:`paired_requests` reads the
labelled requests both models scored, one per district (a district labelled again adds no evidence);
:func:`housing.registry.promotion_policy.decide_challenger` applies the gate's evidence rule;
:func:`judge_challenger` applies its verdict: ``promote`` moves production to the challenger (compare-and-set,
recorded in the production ledger with the live evidence), ``reject`` and ``expire`` remove the ``staging``
alias (the version keeps a ``shadow_verdict`` tag saying why), ``wait`` changes nothing. Called by
``promote.py --from-shadow`` and by every monitor run while a challenger is in shadow; the caller holds the
retrain lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, func, or_, select

from housing.config.settings import Settings
from housing.data.digests import row_digests
from housing.registry.live_policy import ChallengerVerdict, decide_challenger
from housing.registry.production import move_production, move_staging
from housing.registry.versions import get_version_by_alias
from housing.schema import FEATURE_NAMES
from housing.store.labellers import active_digests
from housing.store.locks import aware
from housing.store.log_reads import fair_cap
from housing.store.tables import feedback_table, predictions_table

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

VERDICT_TAG = "shadow_verdict"
"""The tag a dropped challenger's version keeps: why it was dropped."""


def paired_requests(
    engine: Engine, champion: str, challenger: str, labeller_share: float | None = None
) -> pd.DataFrame:
    """Labelled requests scored by both versions (either one answering), oldest first, one per district:
    the 8 features, ``champion`` and ``challenger`` (their predictions), ``actual`` and its ``labeller``.
    With ``labeller_share``, each labeller's newest requests up to the most that keeps every labeller within
    that share (one labeller alone: none)."""
    p, f = predictions_table.c, feedback_table.c
    query = (
        select(
            *(p[name] for name in FEATURE_NAMES),
            p.model_version,
            p.prediction,
            p.shadow_prediction,
            f.actual,
            f.labeller,
        )
        .select_from(predictions_table.join(feedback_table, p.request_id == f.request_id))
        .where(p.shadow_prediction.is_not(None))
        .where(
            or_(
                and_(p.model_version == champion, p.shadow_model_version == challenger),
                and_(p.model_version == challenger, p.shadow_model_version == champion),
            )
        )
        .order_by(p.created_at)
    )
    with engine.connect() as connection:
        result = connection.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    columns = [*FEATURE_NAMES, "champion", "challenger", "actual", "labeller"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    answered_by_champion = (frame["model_version"] == champion).to_numpy()
    frame["champion"] = np.where(
        answered_by_champion, frame["prediction"], frame["shadow_prediction"]
    ).astype(float)
    frame["challenger"] = np.where(
        answered_by_champion, frame["shadow_prediction"], frame["prediction"]
    ).astype(float)
    frame["actual"] = frame["actual"].astype(float)
    frame = frame[~row_digests(frame).duplicated()].reset_index(drop=True)
    if labeller_share is not None:
        who = frame["labeller"].fillna("")
        cap = fair_cap(who.value_counts().tolist(), len(frame), labeller_share, alone_too=True)
        reversed_who = who.iloc[::-1]
        frame = frame[(reversed_who.groupby(reversed_who).cumcount().iloc[::-1] < cap).to_numpy()]
    return frame[columns].reset_index(drop=True)


def first_scored(engine: Engine, challenger: str) -> datetime | None:
    """When ``challenger`` first scored a request (in shadow or as the canary); None if it never has."""
    p = predictions_table.c
    query = select(func.min(p.created_at)).where(
        or_(
            p.shadow_model_version == challenger,
            and_(p.model_version == challenger, p.served_alias.is_not(None)),
        )
    )
    with engine.connect() as connection:
        first = connection.execute(query).scalar_one_or_none()
    return None if first is None else aware(first)


@dataclass(frozen=True)
class ChallengerOutcome:
    """What one look at the challenger found and did."""

    champion: str | None
    challenger: str | None
    verdict: ChallengerVerdict
    paired_rows: int = 0
    applied: bool = False

    def as_dict(self) -> dict[str, object]:
        """For the monitor's decision file."""
        evidence = self.verdict.evidence
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "action": self.verdict.action,
            "message": self.verdict.message,
            "paired_rows": self.paired_rows,
            "more_needed": self.verdict.more_needed,
            "applied": self.applied,
            "evidence": evidence.as_dict() if evidence else None,
        }


def judge_challenger(
    client: MlflowClient, settings: Settings, engine: Engine, *, command: str, apply: bool = True
) -> ChallengerOutcome:
    """Judge the challenger on the live paired evidence and (``apply``) act on the verdict. The caller holds
    the retrain lock. Without a challenger (staging unset, or naming production's version) the action is
    ``none``.
    """
    name = settings.model_name
    production = get_version_by_alias(client, name, settings.production_alias)
    staging = get_version_by_alias(client, name, settings.staging_alias)
    champion = str(production.version) if production else None
    challenger = str(staging.version) if staging else None
    if champion is None or challenger is None or champion == challenger:
        named = "no version" if challenger is None else "the production version"
        verdict = ChallengerVerdict(
            "none", f"no challenger in shadow ('{settings.staging_alias}' names {named})"
        )
        return ChallengerOutcome(champion, challenger, verdict)
    share = settings.labeller_max_share if active_digests(engine) else None
    pairs = paired_requests(engine, champion, challenger, share)
    started = first_scored(engine, challenger)
    waited = None if started is None else (datetime.now(UTC) - started).total_seconds() / 3600
    verdict = decide_challenger(
        np.square(pairs["actual"] - pairs["champion"]),
        np.square(pairs["actual"] - pairs["challenger"]),
        champion=champion,
        challenger=challenger,
        min_rows=settings.gate_min_labelled_rows,
        confidence=settings.gate_confidence,
        waited_hours=waited,
        max_wait_hours=settings.shadow_max_wait_hours,
    )
    verdict = within_offline_floor(verdict, staging, settings)
    if share is not None and verdict.action == "wait" and pairs["labeller"].nunique() < 2:
        verdict = ChallengerVerdict(
            "wait",
            f"{verdict.message}; the live verdict counts labels from two labellers or more, none making up"
            f" more than {share:.0%} of them (HOUSING_LABELLER_MAX_SHARE)",
            verdict.evidence,
            verdict.more_needed,
        )
    outcome = ChallengerOutcome(
        champion, challenger, verdict, len(pairs), applied=apply and verdict.action != "wait"
    )
    if apply:
        apply_verdict(client, settings, outcome, pairs, command)
    return outcome


def within_offline_floor(verdict: ChallengerVerdict, staging: Any, settings: Settings) -> ChallengerVerdict:
    """The verdict, unless it promotes a challenger whose offline R2 is below the production gate's floor:
    then a rejection (live labels alone never promote a model the offline gate would not)."""
    if verdict.action != "promote":
        return verdict
    r2 = float((staging.tags or {}).get("eval_r2", "nan"))
    if r2 >= settings.production_r2_threshold:
        return verdict
    return ChallengerVerdict(
        "reject",
        f"version {staging.version} did better on live labels, but its offline R2 {r2:.4f} is below the"
        f" production gate's {settings.production_r2_threshold} (HOUSING_PRODUCTION_R2_THRESHOLD): not"
        " promoted",
        verdict.evidence,
    )


def apply_verdict(
    client: MlflowClient, settings: Settings, outcome: ChallengerOutcome, pairs: pd.DataFrame, command: str
) -> None:
    """Promote the challenger (ledger entry with the live evidence), or drop it (staging removed, tag kept),
    or nothing."""
    verdict, name = outcome.verdict, settings.model_name
    if verdict.action == "promote" and outcome.challenger is not None:
        evidence = verdict.evidence.as_dict() if verdict.evidence else None
        rmse = {
            role: float(np.sqrt(np.mean(np.square(pairs["actual"] - pairs[role]))))
            for role in ("champion", "challenger")
        }
        move_production(
            client,
            settings,
            expected=outcome.champion,
            to_version=outcome.challenger,
            command=command,
            reason=verdict.message,
            evidence={"live": evidence, "live_rmse": rmse},
        )
    elif verdict.action in ("reject", "expire") and outcome.challenger is not None:
        client.set_model_version_tag(
            name, outcome.challenger, VERDICT_TAG, f"{verdict.action}: {verdict.message}"[:5000]
        )
        move_staging(client, settings, None, command=command, reason=f"{verdict.action}: {verdict.message}")
