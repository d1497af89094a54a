"""The promotion policy: which version gets ``staging`` and which gets ``production``, from scores alone.

Pure: scores and thresholds in, a :class:`PromotionDecision` out (no MLflow, no I/O).
:func:`housing.registry.promotion.promote` reads the registry, scores the versions, calls
:func:`decide_promotion` and applies the decision.

- ``staging``: the best candidate whose R2 is above the staging gate.
- ``production``: the best candidate, if its R2 is above the production gate, it beats the current
  production on the same evaluation data (higher R2; at equal R2, lower RMSE), and it does so beyond
  noise: the paired bootstrap interval of its gain in (weighted) squared error per row, at
  ``gate_confidence``, lies above zero (:func:`paired_bootstrap`). Paired, because both models are judged
  on the same rows, so the rows' own difficulty cancels; weighted, so labelled traffic counts as much as
  the evaluation data says (little when it is a handful of rows, most of it after a market move).

The challenger on live traffic is judged by the same paired rule, made time-uniform
(:mod:`housing.registry.live_policy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from housing.training.scoring import rank_key, ratio_bootstrap


@dataclass(frozen=True)
class Score:
    """A version scored on the evaluation data."""

    version: str
    candidate: str
    r2: float
    rmse: float
    squared_errors: np.ndarray | None = field(default=None, compare=False, repr=False)
    """Per-row squared errors on the evaluation data (for the paired comparison)."""

    def beats(self, other: Score) -> bool:
        """Higher R2 wins; equal R2, lower RMSE wins."""
        return rank_key(self.r2, self.rmse) < rank_key(other.r2, other.rmse)


@dataclass(frozen=True)
class GateEvidence:
    """A challenger's gain over the champion on the same rows: the weighted mean of (champion's squared
    error - challenger's squared error) per row, with its paired bootstrap interval."""

    rows: int
    mean_gain: float
    low: float
    high: float
    confidence: float
    method: str = "paired bootstrap"
    """How the interval was made: a paired bootstrap (one look), or a time-uniform confidence sequence
    (many)."""

    @property
    def beyond_noise(self) -> bool:
        """Whether the whole interval is above zero: the challenger is better by more than noise."""
        return self.low > 0

    def describe(self) -> str:
        """One line: the gain and its interval."""
        return (
            f"gain in squared error per row {self.mean_gain:+.4f}, {self.confidence:.0%} {self.method}"
            f" interval [{self.low:+.4f}, {self.high:+.4f}] on {self.rows:,} rows"
        )

    def as_dict(self) -> dict[str, float | int | str]:
        """The figures, for the ledger and the logs."""
        return {
            "rows": self.rows,
            "mean_gain": self.mean_gain,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "method": self.method,
        }


def paired_bootstrap(
    champion_se: np.ndarray,
    challenger_se: np.ndarray,
    weights: np.ndarray | None,
    *,
    samples: int,
    confidence: float,
    seed: int = 0,
    chunk: int = 100,
) -> GateEvidence:
    """The weighted mean gain (champion's minus challenger's squared error) and its percentile bootstrap
    interval: rows resampled with replacement ``samples`` times, the same rows for both models."""
    gain = np.asarray(champion_se, dtype=np.float64) - np.asarray(challenger_se, dtype=np.float64)
    w = np.ones_like(gain) if weights is None else np.asarray(weights, dtype=np.float64)
    low, high = ratio_bootstrap(w * gain, w, samples=samples, confidence=confidence, seed=seed, chunk=chunk)
    return GateEvidence(len(gain), float(np.average(gain, weights=w)), low, high, confidence)


@dataclass(frozen=True)
class PromotionDecision:
    """Where the aliases point after promotion, which of them move now, and why."""

    staging_version: str | None
    """The version holding ``staging`` afterwards (None: no version holds it)."""
    production_version: str | None
    """The version holding ``production`` afterwards (None: no version holds it)."""
    move_staging: bool
    move_production: bool
    messages: tuple[str, ...]


def passes_staging_gate(r2: float, staging_r2_threshold: float) -> bool:
    """The staging gate: R2 strictly above the threshold."""
    return r2 > staging_r2_threshold


def ranked(scores: Sequence[Score]) -> list[Score]:
    """The scores best first (higher R2; at equal R2, lower RMSE); ties keep their order."""
    return sorted(scores, key=lambda score: rank_key(score.r2, score.rmse))


def production_score_needed(
    candidates: Sequence[Score], production_version: str | None, production_r2_threshold: float
) -> bool:
    """Whether :func:`decide_promotion` must be given the current production's own score.

    Only when production exists, is not one of the candidates, and the best candidate passes the
    production gate (otherwise the comparison never happens, so the caller need not load that model).
    """
    if (
        production_version is None
        or not candidates
        or any(score.version == production_version for score in candidates)
    ):
        return False
    return ranked(candidates)[0].r2 > production_r2_threshold


def decide_promotion(
    candidates: Sequence[Score],
    *,
    production_version: str | None,
    current_staging: str | None,
    staging_r2_threshold: float,
    production_r2_threshold: float,
    staging_alias: str,
    production_alias: str,
    production: Score | None = None,
    evidence: GateEvidence | None = None,
) -> PromotionDecision:
    """Apply the staging and production gates to the scored candidates of one training run.

    ``production_version`` / ``current_staging``: the versions the aliases point to now (None: unset).
    ``production``: the current production's score, needed only when :func:`production_score_needed`
    says so (when production is a candidate its score is taken from ``candidates``).
    """
    if not candidates:
        raise ValueError("decide_promotion needs at least one scored candidate")
    best_first = ranked(candidates)
    staging_version, move_staging, staging_message = _decide_staging(
        best_first, current_staging, staging_r2_threshold, staging_alias
    )
    if production_version is not None and production is None:
        production = next((score for score in candidates if score.version == production_version), None)
    production_after, production_message = _decide_production(
        best_first[0], production_version, production, production_r2_threshold, production_alias, evidence
    )
    return PromotionDecision(
        staging_version=staging_version,
        production_version=production_after,
        move_staging=move_staging,
        move_production=production_after != production_version,
        messages=(staging_message, production_message),
    )


def for_shadow_mode(
    decision: PromotionDecision, production_version: str | None, staging_alias: str
) -> PromotionDecision:
    """The decision in promotion mode ``shadow``: production never moves here (unless there is none yet); the
    best candidate holds staging, so the API scores it in shadow and live paired evidence decides."""
    if production_version is None or not decision.move_production:
        return decision
    challenger = decision.staging_version
    message = (
        f"promotion mode shadow: production stays at version {production_version}; "
        + (
            f"the challenger '{staging_alias}' (version {challenger}) is judged on live traffic (promote.py"
            " --from-shadow, or the monitor)"
            if challenger is not None and challenger != production_version
            else f"no challenger in '{staging_alias}'"
        )
        + f" [the direct gate would have said: {decision.messages[-1]}]"
    )
    return PromotionDecision(
        decision.staging_version,
        production_version,
        decision.move_staging,
        False,
        (*decision.messages[:-1], message),
    )


def _decide_staging(
    best_first: list[Score], current_staging: str | None, threshold: float, alias: str
) -> tuple[str | None, bool, str]:
    """(version holding staging afterwards, whether the alias moves, message)."""
    passed = [score for score in best_first if passes_staging_gate(score.r2, threshold)]
    if not passed:
        return (
            current_staging,
            False,
            f"no candidate passed the staging gate (R2 > {threshold}); '{alias}' unchanged",
        )
    best = passed[0]
    moved = current_staging != best.version
    message = (
        f"{len(passed)} candidate(s) passed the staging gate (R2 > {threshold}); "
        f"'{alias}' {'->' if moved else 'stays at'} version {best.version} ({best.candidate})"
    )
    return best.version, moved, message


def _decide_production(
    best: Score,
    production_version: str | None,
    production: Score | None,
    threshold: float,
    alias: str,
    evidence: GateEvidence | None,
) -> tuple[str | None, str]:
    """(version holding production afterwards, message)."""
    if best.r2 <= threshold:
        return (
            production_version,
            (
                f"production unchanged: the best candidate, version {best.version} ({best.candidate}), "
                f"has R2 {best.r2:.4f}, not above the production gate {threshold}"
            ),
        )
    if production_version is None:
        return (
            best.version,
            (
                f"'{alias}' -> version {best.version} ({best.candidate}, R2 {best.r2:.4f}, RMSE"
                f" {best.rmse:.4f}); there was no production model"
            ),
        )
    if production_version == best.version:
        return (
            production_version,
            (
                f"production unchanged: version {best.version} ({best.candidate}) "
                "is already production and still the best"
            ),
        )
    if production is None:
        raise ValueError(f"production version {production_version} is not a candidate: its score is needed")
    if best.beats(production) and evidence is not None and evidence.beyond_noise:
        return (
            best.version,
            (
                f"'{alias}' -> version {best.version} ({best.candidate}, R2 {best.r2:.4f}, RMSE"
                f" {best.rmse:.4f}); it beats version {production.version} ({production.candidate}, R2"
                f" {production.r2:.4f}, RMSE {production.rmse:.4f}) on the same data beyond noise"
                f" ({evidence.describe()})"
            ),
        )
    if best.beats(production):
        return production_version, (
            f"production unchanged: the best candidate, version {best.version} ({best.candidate}, "
            f"R2 {best.r2:.4f}, RMSE {best.rmse:.4f}), beats production version {production.version} "
            f"(R2 {production.r2:.4f}, RMSE {production.rmse:.4f}) but not beyond noise ("
            + (evidence.describe() if evidence is not None else "no paired evidence")
            + ")"
        )
    return (
        production_version,
        (
            f"production unchanged: the best candidate, version {best.version} ({best.candidate}, "
            f"R2 {best.r2:.4f}, RMSE {best.rmse:.4f}), does not beat production version {production.version} "
            f"({production.candidate}, R2 {production.r2:.4f}, RMSE {production.rmse:.4f}) on the same data"
        ),
    )
