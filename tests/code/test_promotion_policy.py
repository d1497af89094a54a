"""The promotion policy on hand-made scores: every branch of the staging and production gates, no MLflow."""

from __future__ import annotations

import numpy as np
import pytest

from housing.registry.promotion_policy import (
    GateEvidence,
    PromotionDecision,
    Score,
    decide_promotion,
    paired_bootstrap,
    passes_staging_gate,
    production_score_needed,
    ranked,
)

STAGING_GATE, PRODUCTION_GATE = 0.7, 0.75


CLEAR_GAIN = GateEvidence(rows=4128, mean_gain=0.02, low=0.012, high=0.028, confidence=0.95)
"""A challenger better beyond noise."""
NOISE = GateEvidence(rows=4128, mean_gain=0.002, low=-0.004, high=0.008, confidence=0.95)
"""A challenger better on average, within noise."""


def decide(
    candidates: list[Score],
    *,
    production_version: str | None = None,
    current_staging: str | None = None,
    production: Score | None = None,
    evidence: GateEvidence | None = CLEAR_GAIN,
) -> PromotionDecision:
    """The policy with the default gates and alias names."""
    return decide_promotion(
        candidates,
        production_version=production_version,
        current_staging=current_staging,
        staging_r2_threshold=STAGING_GATE,
        production_r2_threshold=PRODUCTION_GATE,
        staging_alias="staging",
        production_alias="production",
        production=production,
        evidence=evidence,
    )


LINEAR = Score("1", "linear_regression", 0.60, 0.72)
FOREST = Score("2", "random_forest", 0.80, 0.51)
BOOSTING = Score("3", "gradient_boosting", 0.84, 0.46)


def test_the_staging_gate_is_strict():
    assert passes_staging_gate(0.71, 0.7) and not passes_staging_gate(0.7, 0.7)


def test_ranking_is_by_r2_then_rmse():
    tie = Score("4", "lightgbm", 0.84, 0.45)
    assert [score.version for score in ranked([LINEAR, BOOSTING, FOREST, tie])] == ["4", "3", "2", "1"]
    assert tie.beats(BOOSTING) and not BOOSTING.beats(tie) and not BOOSTING.beats(BOOSTING)


def test_no_candidate_passes_staging():
    decision = decide([LINEAR, Score("2", "knn", 0.70, 0.66)], production_version="7", current_staging="6")
    assert decision.staging_version == "6" and not decision.move_staging  # staging stays where it was
    assert decision.production_version == "7" and not decision.move_production
    assert decision.messages == (
        "no candidate passed the staging gate (R2 > 0.7); 'staging' unchanged",
        (
            "production unchanged: the best candidate, version 2 (knn), has R2 0.7000, not above the"
            " production gate 0.75"
        ),
    )


def test_no_candidate_passes_staging_and_no_staging_yet():
    decision = decide([LINEAR])
    assert decision.staging_version is None and not decision.move_staging
    assert decision.production_version is None and not decision.move_production


def test_staging_moves_to_the_best_candidate_past_its_gate():
    decision = decide([LINEAR, FOREST, BOOSTING], current_staging="2", production_version="3")
    assert decision.staging_version == "3" and decision.move_staging
    assert (
        decision.messages[0]
        == "2 candidate(s) passed the staging gate (R2 > 0.7); 'staging' -> version 3 (gradient_boosting)"
    )


def test_staging_is_set_when_there_was_none():
    decision = decide([FOREST])
    assert decision.staging_version == "2" and decision.move_staging
    assert (
        decision.messages[0]
        == "1 candidate(s) passed the staging gate (R2 > 0.7); 'staging' -> version 2 (random_forest)"
    )


def test_staging_stays_when_it_already_names_the_best():
    decision = decide([LINEAR, FOREST, BOOSTING], current_staging="3", production_version="3")
    assert decision.staging_version == "3" and not decision.move_staging
    assert (
        decision.messages[0]
        == "2 candidate(s) passed the staging gate (R2 > 0.7); 'staging' stays at version 3"
        " (gradient_boosting)"
    )


def test_best_below_the_production_gate_keeps_production():
    decent = Score("2", "random_forest", 0.74, 0.55)  # past staging (0.7), not past production (0.75)
    decision = decide([LINEAR, decent], production_version=None, current_staging=None)
    assert decision.staging_version == "2" and decision.move_staging
    assert decision.production_version is None and not decision.move_production
    assert (
        decision.messages[1]
        == "production unchanged: the best candidate, version 2 (random_forest), has R2 0.7400, "
        "not above the production gate 0.75"
    )


def test_the_production_gate_is_strict():
    decision = decide([Score("2", "random_forest", 0.75, 0.5)])
    assert (
        decision.production_version is None and "not above the production gate 0.75" in decision.messages[1]
    )


def test_no_production_yet_takes_the_best():
    decision = decide([LINEAR, FOREST, BOOSTING])
    assert decision.production_version == "3" and decision.move_production
    assert (
        decision.messages[1] == "'production' -> version 3 (gradient_boosting, R2 0.8400, RMSE 0.4600); "
        "there was no production model"
    )


def test_production_already_the_best_stays():
    decision = decide([LINEAR, FOREST, BOOSTING], production_version="3", current_staging="3")
    assert decision.production_version == "3" and not decision.move_production and not decision.move_staging
    assert (
        decision.messages[1]
        == "production unchanged: version 3 (gradient_boosting) is already production and still the best"
    )


def test_a_candidate_that_beats_production_by_r2_takes_it():
    decision = decide([LINEAR, FOREST, BOOSTING], production_version="2")
    assert decision.production_version == "3" and decision.move_production
    assert (
        decision.messages[1] == "'production' -> version 3 (gradient_boosting, R2 0.8400, RMSE 0.4600); "
        "it beats version 2 (random_forest, R2 0.8000, RMSE 0.5100) on the same data beyond noise "
        "(gain in squared error per row +0.0200, 95% paired bootstrap interval [+0.0120, +0.0280] "
        "on 4,128 rows)"
    )


def test_a_better_candidate_within_noise_leaves_production():
    for evidence, said in ((NOISE, "[-0.0040, +0.0080]"), (None, "no paired evidence")):
        decision = decide([LINEAR, FOREST, BOOSTING], production_version="2", evidence=evidence)
        assert decision.production_version == "2" and not decision.move_production
        assert decision.messages[1].startswith("production unchanged: the best candidate, version 3")
        assert "but not beyond noise" in decision.messages[1] and said in decision.messages[1]


def test_paired_bootstrap_sees_no_gain_between_identical_models():
    errors = np.random.default_rng(0).gamma(1.0, 0.15, 4000)
    evidence = paired_bootstrap(errors, errors.copy(), None, samples=300, confidence=0.95)
    assert evidence.mean_gain == 0 and evidence.low == 0 and evidence.high == 0 and not evidence.beyond_noise


def test_paired_bootstrap_separates_a_real_gain_from_noise():
    rng = np.random.default_rng(1)
    champion = rng.gamma(1.0, 0.15, 4000)
    better = champion * 0.9  # 10 % less squared error on every row
    noisy = champion + rng.normal(0, 0.05, 4000)  # no gain on average
    clear = paired_bootstrap(champion, better, None, samples=500, confidence=0.95)
    assert clear.beyond_noise and clear.low <= clear.mean_gain <= clear.high
    assert not paired_bootstrap(champion, noisy, None, samples=500, confidence=0.95).beyond_noise


def test_paired_bootstrap_follows_the_weights():
    champion = np.array([1.0] * 50 + [0.1] * 50)
    challenger = np.array([0.5] * 50 + [0.3] * 50)  # better on the first half, worse on the second
    first = np.array([10.0] * 50 + [1.0] * 50)
    second = first[::-1].copy()
    assert paired_bootstrap(champion, challenger, first, samples=300, confidence=0.95).beyond_noise
    assert paired_bootstrap(champion, challenger, second, samples=300, confidence=0.95).high < 0


def test_equal_r2_is_broken_by_rmse():
    production = Score("2", "random_forest", 0.84, 0.47)
    decision = decide([production, BOOSTING], production_version="2")  # same R2, lower RMSE
    assert decision.production_version == "3" and decision.move_production
    assert (
        "it beats version 2 (random_forest, R2 0.8400, RMSE 0.4700) on the same data beyond noise"
        in decision.messages[1]
    )


def test_a_candidate_that_does_not_beat_production_leaves_it():
    production = Score("9", "lightgbm", 0.86, 0.44)  # an older, better version, not among the candidates
    assert production_score_needed([LINEAR, FOREST, BOOSTING], "9", PRODUCTION_GATE)
    decision = decide(
        [LINEAR, FOREST, BOOSTING], production_version="9", current_staging="3", production=production
    )
    assert decision.production_version == "9" and not decision.move_production
    assert decision.staging_version == "3" and not decision.move_staging
    assert (
        decision.messages[1]
        == "production unchanged: the best candidate, version 3 (gradient_boosting, R2 0.8400, RMSE 0.4600), "
        "does not beat production version 9 (lightgbm, R2 0.8600, RMSE 0.4400) on the same data"
    )


def test_an_exact_tie_does_not_move_production():
    production = Score("9", "lightgbm", 0.84, 0.46)
    decision = decide([BOOSTING], production_version="9", production=production)
    assert decision.production_version == "9" and not decision.move_production
    assert "does not beat production version 9" in decision.messages[1]


def test_production_not_among_the_candidates_is_compared_on_its_own_score():
    older = Score("5", "random_forest", 0.79, 0.53)
    decision = decide([LINEAR, FOREST, BOOSTING], production_version="5", production=older)
    assert decision.production_version == "3" and decision.move_production
    assert "it beats version 5 (random_forest, R2 0.7900, RMSE 0.5300)" in decision.messages[1]


def test_production_not_among_the_candidates_needs_its_score():
    with pytest.raises(ValueError, match="its score is needed"):
        decide([LINEAR, FOREST, BOOSTING], production_version="5")


def test_production_score_is_needed_only_when_the_comparison_happens():
    candidates = [LINEAR, FOREST, BOOSTING]
    assert production_score_needed(candidates, "5", PRODUCTION_GATE)  # not a candidate, best past the gate
    assert not production_score_needed(candidates, None, PRODUCTION_GATE)  # no production
    assert not production_score_needed(
        candidates, "2", PRODUCTION_GATE
    )  # production is a candidate: scored already
    assert not production_score_needed([LINEAR], "5", PRODUCTION_GATE)  # best below the gate: no comparison
    assert not production_score_needed([], "5", PRODUCTION_GATE)


def test_a_production_among_the_candidates_is_taken_from_their_scores():
    decision = decide([LINEAR, FOREST, BOOSTING], production_version="2", production=None)
    assert "it beats version 2 (random_forest, R2 0.8000, RMSE 0.5100)" in decision.messages[1]


def test_no_candidates_is_a_programming_error():
    with pytest.raises(ValueError, match="at least one"):
        decide([])


def test_alias_names_come_from_the_caller():
    decision = decide_promotion(
        [BOOSTING],
        production_version=None,
        current_staging=None,
        staging_r2_threshold=0.5,
        production_r2_threshold=0.5,
        staging_alias="candidate",
        production_alias="champion",
    )
    assert decision.messages == (
        "1 candidate(s) passed the staging gate (R2 > 0.5); 'candidate' -> version 3 (gradient_boosting)",
        "'champion' -> version 3 (gradient_boosting, R2 0.8400, RMSE 0.4600); there was no production model",
    )
