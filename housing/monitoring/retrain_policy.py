"""The retrain policy: whether one window's figures call for retraining, and why.

Pure: :class:`~housing.monitoring.drift_report.WindowFigures`, thresholds and the count of new evidence in, a
:class:`Decision` out (no Evidently, no MLflow, no database). Something is wrong when more than
``drift_share_threshold`` of the features drifted, or, with at least ``min_labels`` labelled predictions,
when RMSE is above ``rmse_threshold`` or R2 below ``r2_threshold``. Then it retrains only with evidence:
at least ``min_labels`` labelled districts that no model has learnt from
(:mod:`housing.store.retrain_evidence`); without it the decision is an alert that says how many more are
needed, never a retrain. With fewer than ``min_window`` predictions it makes no decision (small windows raise
false alarms). While the error cannot be judged from labels, an error *estimated* without labels
(:mod:`housing.monitoring.loss_estimation`) whose whole interval is above ``rmse_threshold`` is a reason too
("expected degradation"): an alert that asks for the labels needed to confirm it; retraining still needs the
evidence. A retrain re-prices old labels by the price-index step the new labels show; a step larger than
``retrain_max_price_step`` (up or down), unless a person approved it, turns a retrain into an alert that says
how to approve it: labels alone, from whoever holds a token, never re-price every training label at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from housing.config.settings import Settings
from housing.monitoring.coverage import CoverageFigures
from housing.monitoring.drift_report import PREDICTION, WindowFigures
from housing.monitoring.loss_estimation import Estimate

RETRAIN, NO_ACTION, INSUFFICIENT_DATA, ALERT = (
    "retrain",
    "no retrain",
    "insufficient data",
    "alert, no retrain",
)


@dataclass
class Decision:
    """The monitor's verdict, its reasons, and notes on what it could not judge."""

    action: str
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evidence_needed: int = 0
    """New labelled districts still needed before a retrain (an alert's count; 0 otherwise)."""
    labels_to_confirm: int = 0
    """Labelled predictions needed to confirm an expected degradation (0: none expected)."""
    price_step_to_approve: float = 0.0
    """The price-index step a person must approve before a retrain applies it (0: none)."""

    @property
    def retrain(self) -> bool:
        """Whether the verdict is to retrain."""
        return self.action == RETRAIN


@dataclass(frozen=True)
class PriceMove:
    """The price-index step the new labels show against the served predictions, and the largest step a
    retrain may apply (the setting's, or a person's approval of a larger one)."""

    step: float
    low: float
    high: float
    allowed: float

    @property
    def moved(self) -> bool:
        """The step's interval excludes 1: a real move, which a retrain applies."""
        return self.low > 1.0 or self.high < 1.0

    @property
    def beyond(self) -> bool:
        """A real move larger (up or down) than a retrain may apply on its own."""
        return self.moved and max(self.step, 1.0 / self.step) > self.allowed * (1 + 1e-9)


@dataclass(frozen=True)
class RetrainThresholds:
    """The numbers :func:`decide` judges a window by."""

    min_window: int
    min_labels: int
    drift_share_threshold: float
    rmse_threshold: float
    r2_threshold: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrainThresholds:
        """The monitor's thresholds from the settings."""
        return cls(
            min_window=settings.monitor_min_window,
            min_labels=settings.monitor_min_labels,
            drift_share_threshold=settings.drift_share_threshold,
            rmse_threshold=settings.rmse_threshold,
            r2_threshold=settings.r2_threshold,
        )


def decide(
    figures: WindowFigures,
    thresholds: RetrainThresholds,
    new_districts: int | None = None,
    estimate: Estimate | None = None,
    price_move: PriceMove | None = None,
    coverage: CoverageFigures | None = None,
) -> Decision:
    """Apply the thresholds (drift share; RMSE / R2 when there are enough labels, else the estimated RMSE),
    then the evidence rule.

    ``new_districts``: labelled districts no model has learnt from; None counts every labelled row as new
    (for callers that track no evidence, such as the benchmark's synthetic windows). ``estimate``: the error
    estimated without labels on the window's unlabelled predictions (None: no loss estimator).
    ``price_move``: the price step the evidence shows (None: not measured). ``coverage``: the prediction
    interval's coverage of the labelled predictions (below its level beyond noise, with enough labels: a
    reason).
    """
    if figures.window_rows < thresholds.min_window:
        return Decision(
            INSUFFICIENT_DATA,
            notes=[
                f"only {figures.window_rows:,} logged predictions in the window; {thresholds.min_window:,}"
                " are needed before a decision (small windows raise false alarms)"
            ],
        )
    reasons, notes = _reasons(figures, thresholds, estimated=estimate is not None)
    found = coverage.overall if coverage is not None else None
    if (
        coverage is not None
        and found is not None
        and found.rows >= thresholds.min_labels
        and found.below(coverage.level)
    ):
        reasons.append(
            f"the prediction interval held {found.coverage:.1%} of {found.rows:,} labelled predictions"
            f" ({found.low:.1%}-{found.high:.1%}), below its {coverage.level:.0%} level beyond noise"
        )
    labels_to_confirm = 0
    if estimate is not None and figures.labelled_rows < thresholds.min_labels:
        labels_to_confirm = _expected_degradation(estimate, thresholds, reasons, notes)
    if not reasons:
        return Decision(NO_ACTION, reasons, notes)
    evidence = figures.labelled_rows if new_districts is None else new_districts
    if evidence >= thresholds.min_labels and price_move is not None and price_move.beyond:
        reasons.append(
            f"the new labels show prices x{price_move.step:.3f} ({price_move.low:.3f}-{price_move.high:.3f})"
            f" against the served predictions, a larger move than the x{price_move.allowed:.3f} a retrain"
            " applies on its own (HOUSING_RETRAIN_MAX_PRICE_STEP): not retraining; if the market really"
            f" moved, approve it with `python monitor.py --approve-price-step {price_move.step:.4f}`"
        )
        return Decision(
            ALERT, reasons, notes, labels_to_confirm=labels_to_confirm, price_step_to_approve=price_move.step
        )
    if evidence >= thresholds.min_labels:
        return Decision(RETRAIN, reasons, notes, labels_to_confirm=labels_to_confirm)
    needed = thresholds.min_labels - evidence
    notes.insert(
        0,
        f"not retraining: only {evidence:,} labelled districts that no model has learnt from; "
        f"{needed:,} more are needed before a retrain",
    )
    return Decision(ALERT, reasons, notes, evidence_needed=needed, labels_to_confirm=labels_to_confirm)


def _expected_degradation(
    estimate: Estimate, thresholds: RetrainThresholds, reasons: list[str], notes: list[str]
) -> int:
    """An estimated RMSE whose interval clears the threshold is a reason (expected degradation); one above the
    threshold whose interval does not is a note. Returns the labels needed to confirm (0 when none)."""
    needed = estimate.labels_needed(thresholds.rmse_threshold)
    described = (
        f"estimated RMSE {estimate.rmse:.3f} ({estimate.confidence:.0%} interval"
        f" {estimate.rmse_low:.3f}-{estimate.rmse_high:.3f}) on {estimate.rows:,} unlabelled predictions"
    )
    if estimate.clears(thresholds.rmse_threshold) and needed is not None:
        reasons.append(
            f"expected degradation: {described} is above {thresholds.rmse_threshold}; about {needed:,} labels"
            " are needed to confirm it"
        )
        return needed
    if estimate.rmse > thresholds.rmse_threshold:
        notes.append(f"{described} is above {thresholds.rmse_threshold}, but its interval is not clear of it")
    return 0


def _reasons(
    figures: WindowFigures, thresholds: RetrainThresholds, *, estimated: bool = False
) -> tuple[list[str], list[str]]:
    """What is wrong with the window (reasons) and what could not be judged (notes)."""
    reasons, notes = [], []
    if figures.drift_share > thresholds.drift_share_threshold:
        reasons.append(
            f"{figures.drift_share:.0%} of the features drifted ({', '.join(figures.drifted_features)}), "
            f"above {thresholds.drift_share_threshold:.0%}"
        )
    if figures.prediction_drifted:
        notes.append(
            "the prediction's distribution drifted (score"
            f" {figures.drift_scores.get(PREDICTION, float('nan')):.3f})"
        )
    if figures.labelled_rows < thresholds.min_labels:
        notes.append(
            f"only {figures.labelled_rows:,} labelled predictions (fewer than {thresholds.min_labels:,}): "
            "error not judged from labels, decision on drift"
            + (" and the error estimated without labels" if estimated else " alone")
        )
    else:
        if figures.rmse is not None and figures.rmse > thresholds.rmse_threshold:
            reasons.append(
                f"RMSE {figures.rmse:.3f} on {figures.labelled_rows:,} labelled predictions is above"
                f" {thresholds.rmse_threshold}"
            )
        if figures.r2 is not None and figures.r2 < thresholds.r2_threshold:
            reasons.append(
                f"R2 {figures.r2:.3f} on {figures.labelled_rows:,} labelled predictions is below"
                f" {thresholds.r2_threshold}"
            )
    return reasons, notes
