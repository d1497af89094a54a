"""The retrain policy on hand-made window figures: every branch, no Evidently, no MLflow, no database."""

from __future__ import annotations

import pytest

from housing.config.settings import Settings
from housing.monitoring.drift_report import PREDICTION, WindowFigures
from housing.monitoring.retrain_policy import (
    ALERT,
    INSUFFICIENT_DATA,
    NO_ACTION,
    RETRAIN,
    Decision,
    PriceMove,
    RetrainThresholds,
    decide,
)
from housing.schema import FEATURE_NAMES

THRESHOLDS = RetrainThresholds(
    min_window=500, min_labels=200, drift_share_threshold=0.2, rmse_threshold=0.5, r2_threshold=0.6
)


def window(
    *,
    rows: int = 2000,
    labelled: int = 2000,
    drifted: tuple[str, ...] = (),
    prediction_drifted: bool = False,
    rmse: float | None = 0.3,
    r2: float | None = 0.8,
) -> WindowFigures:
    """Figures of a window: the named features drifted (score 0.5), the others did not (score 0.01)."""
    columns = (*FEATURE_NAMES, PREDICTION)
    flags = {name: name in drifted for name in FEATURE_NAMES} | {PREDICTION: prediction_drifted}
    return WindowFigures(
        window_rows=rows,
        labelled_rows=labelled,
        drift_scores={name: 0.5 if flags[name] else 0.01 for name in columns},
        drifted=flags,
        drift_method="wasserstein",
        rmse=rmse,
        r2=r2,
    )


def test_thresholds_come_from_the_settings():
    settings = Settings(
        monitor_min_window=500,
        monitor_min_labels=200,
        drift_share_threshold=0.2,
        rmse_threshold=0.5,
        r2_threshold=0.6,
    )
    assert RetrainThresholds.from_settings(settings) == THRESHOLDS


def test_small_window_is_not_judged():
    figures = WindowFigures(
        window_rows=120,
        labelled_rows=120,
        drift_scores={"MedInc": 0.9},
        drifted={name: True for name in FEATURE_NAMES},
        drift_method="wasserstein",
        rmse=2.0,
        r2=-1.0,
    )
    decision = decide(figures, THRESHOLDS)
    assert decision.action == INSUFFICIENT_DATA and "500 are needed" in decision.notes[0]
    assert decision.reasons == [] and not decision.retrain
    assert decision.notes == [
        "only 120 logged predictions in the window; 500 are needed before a decision (small windows raise"
        " false alarms)"
    ]


def test_a_window_of_exactly_the_minimum_is_judged():
    assert decide(window(rows=499, labelled=499), THRESHOLDS).action == INSUFFICIENT_DATA
    assert decide(window(rows=500, labelled=500), THRESHOLDS).action == NO_ACTION


def test_a_healthy_window_keeps_the_model():
    decision = decide(window(drifted=("MedInc",)), THRESHOLDS)  # 1 of 8 = 12.5 %, not above 20 %
    assert decision == Decision(NO_ACTION, [], [])
    assert not decision.retrain


def test_drift_share_above_the_threshold_retrains():
    decision = decide(window(drifted=("MedInc", "AveRooms", "Population")), THRESHOLDS)
    assert decision.action == RETRAIN and decision.retrain
    assert decision.reasons == ["38% of the features drifted (MedInc, AveRooms, Population), above 20%"]


def test_drift_share_at_the_threshold_does_not_retrain():
    policy = RetrainThresholds(
        min_window=500, min_labels=200, drift_share_threshold=0.25, rmse_threshold=0.5, r2_threshold=0.6
    )
    assert (
        decide(window(drifted=("MedInc", "AveRooms")), policy).action == NO_ACTION
    )  # 2 of 8 = 25 %: not above
    assert decide(window(drifted=("MedInc", "AveRooms", "Latitude")), policy).action == RETRAIN


def test_rmse_above_the_threshold_retrains():
    decision = decide(window(rmse=0.61, r2=0.7), THRESHOLDS)
    assert decision.action == RETRAIN
    assert decision.reasons == ["RMSE 0.610 on 2,000 labelled predictions is above 0.5"]


def test_r2_below_the_threshold_retrains():
    decision = decide(window(rmse=0.4, r2=0.55), THRESHOLDS)
    assert decision.action == RETRAIN
    assert decision.reasons == ["R2 0.550 on 2,000 labelled predictions is below 0.6"]


def test_every_reason_is_given():
    decision = decide(window(drifted=("HouseAge", "Latitude"), rmse=0.9, r2=0.1), THRESHOLDS)
    assert [reason.split()[0] for reason in decision.reasons] == ["25%", "RMSE", "R2"]


def test_too_few_labels_decides_on_drift_alone():
    decision = decide(
        window(labelled=199, rmse=2.0, r2=-1.0), THRESHOLDS
    )  # a huge error, but on too few labels
    assert decision.action == NO_ACTION and decision.reasons == []
    assert decision.notes == [
        "only 199 labelled predictions (fewer than 200): error not judged from labels, decision on drift"
        " alone"
    ]
    judged = decide(
        window(labelled=200, rmse=2.0, r2=-1.0), THRESHOLDS
    )  # exactly the minimum: the error counts
    assert judged.action == RETRAIN and len(judged.reasons) == 2 and judged.notes == []
    drifted = decide(window(labelled=0, rmse=None, r2=None, drifted=("HouseAge", "Latitude")), THRESHOLDS)
    assert (
        drifted.action == ALERT and len(drifted.reasons) == 1
    )  # drift without labels: no evidence to learn from
    assert any("decision on drift alone" in note for note in drifted.notes)


def test_drift_without_new_evidence_is_an_alert_that_counts_what_is_missing():
    poisoned = window(labelled=50, rmse=None, r2=None, drifted=("MedInc", "HouseAge", "AveRooms", "Latitude"))
    decision = decide(poisoned, THRESHOLDS, new_districts=1)  # 50 labels, all for one district
    assert decision.action == ALERT and not decision.retrain and decision.evidence_needed == 199
    assert (
        decision.notes[0] == "not retraining: only 1 labelled districts that no model has learnt from; "
        "199 more are needed before a retrain"
    )
    assert decide(poisoned, THRESHOLDS, new_districts=199).action == ALERT
    assert decide(poisoned, THRESHOLDS, new_districts=200).action == RETRAIN


def test_an_error_already_learnt_from_is_not_retrained_on_again():
    bad = window(labelled=2000, rmse=0.9, r2=0.2)
    assert decide(bad, THRESHOLDS, new_districts=2000).action == RETRAIN
    repeated = decide(
        bad, THRESHOLDS, new_districts=0
    )  # every labelled district was used by an earlier retrain
    assert repeated.action == ALERT and repeated.evidence_needed == 200 and len(repeated.reasons) == 2


def test_no_problem_needs_no_evidence():
    assert decide(window(), THRESHOLDS, new_districts=0).action == NO_ACTION


def test_enough_labels_without_quality_figures_judge_drift_only():
    decision = decide(window(rmse=None, r2=None), THRESHOLDS)
    assert decision == Decision(NO_ACTION, [], [])


def test_prediction_drift_is_a_note_not_a_reason():
    decision = decide(window(prediction_drifted=True), THRESHOLDS)
    assert decision.action == NO_ACTION and decision.reasons == []
    assert decision.notes == ["the prediction's distribution drifted (score 0.500)"]


@pytest.mark.parametrize("action", [NO_ACTION, INSUFFICIENT_DATA])
def test_only_a_retrain_verdict_retrains(action):
    assert Decision(RETRAIN).retrain and not Decision(action).retrain


@pytest.mark.parametrize(
    ("step", "low", "high", "allowed", "action"),
    [
        (1.29, 1.27, 1.31, 1.35, RETRAIN),  # a market move within what a retrain applies alone
        (1.45, 1.40, 1.50, 1.35, ALERT),  # larger: a person approves it first
        (1.45, 1.40, 1.50, 1.50, RETRAIN),  # approved
        (0.70, 0.68, 0.72, 1.35, ALERT),  # a fall counts the same (1 / 0.70 = 1.43)
        (1.60, 0.90, 2.30, 1.35, RETRAIN),  # an interval holding 1 is no move: nothing is re-priced
    ],
)
def test_a_price_move_beyond_what_a_retrain_applies_alone_is_an_alert_naming_the_step(
    step, low, high, allowed, action
):
    decision = decide(window(rmse=0.8), THRESHOLDS, 300, price_move=PriceMove(step, low, high, allowed))
    assert decision.action == action
    if action == ALERT:
        assert decision.price_step_to_approve == step
        assert f"--approve-price-step {step:.4f}" in decision.reasons[-1]
    else:
        assert decision.price_step_to_approve == 0.0
