"""The retrain policy: whether one window's figures call for retraining, and why.

Pure: :class:`~housing.drift_report.WindowFigures` and thresholds in, a :class:`Decision` out (no
Evidently, no MLflow, no database). Retrain when more than ``drift_share_threshold`` of the features
drifted, or, with at least ``min_labels`` labelled predictions, when RMSE is above ``rmse_threshold``
or R2 below ``r2_threshold``. With too few labels it says so and decides on drift alone; with fewer
than ``min_window`` predictions it makes no decision (small windows raise false alarms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from housing.config import Settings
from housing.drift_report import PREDICTION, WindowFigures

RETRAIN, NO_ACTION, INSUFFICIENT_DATA = "retrain", "no retrain", "insufficient data"


@dataclass
class Decision:
    """The monitor's verdict, its reasons, and notes on what it could not judge."""

    action: str
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def retrain(self) -> bool:
        """Whether the verdict is to retrain."""
        return self.action == RETRAIN


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


def decide(figures: WindowFigures, thresholds: RetrainThresholds) -> Decision:
    """Apply the thresholds: drift share, and RMSE / R2 when there are enough labels."""
    if figures.window_rows < thresholds.min_window:
        return Decision(INSUFFICIENT_DATA, notes=[
            f"only {figures.window_rows:,} logged predictions in the window; {thresholds.min_window:,} are needed "
            "before a decision (small windows raise false alarms)"])
    reasons, notes = [], []
    if figures.drift_share > thresholds.drift_share_threshold:
        reasons.append(f"{figures.drift_share:.0%} of the features drifted ({', '.join(figures.drifted_features)}), "
                       f"above {thresholds.drift_share_threshold:.0%}")
    if figures.prediction_drifted:
        notes.append(f"the prediction's distribution drifted (score {figures.drift_scores.get(PREDICTION, float('nan')):.3f})")
    if figures.labelled_rows < thresholds.min_labels:
        notes.append(f"only {figures.labelled_rows:,} labelled predictions (fewer than {thresholds.min_labels:,}): "
                     "error not judged, decision on drift alone")
    else:
        if figures.rmse is not None and figures.rmse > thresholds.rmse_threshold:
            reasons.append(f"RMSE {figures.rmse:.3f} on {figures.labelled_rows:,} labelled predictions is above {thresholds.rmse_threshold}")
        if figures.r2 is not None and figures.r2 < thresholds.r2_threshold:
            reasons.append(f"R2 {figures.r2:.3f} on {figures.labelled_rows:,} labelled predictions is below {thresholds.r2_threshold}")
    return Decision(RETRAIN if reasons else NO_ACTION, reasons, notes)
