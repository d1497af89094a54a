"""The live policy: the challenger judged on paired labelled requests with a time-uniform interval."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from housing.registry.live_policy import (
    confidence_sequence,
    decide_challenger,
    labels_needed,
    sequence_radius,
)

RULE: dict[str, Any] = {
    "champion": "3",
    "challenger": "7",
    "min_rows": 100,
    "confidence": 0.95,
    "max_wait_hours": 72.0,
}


def errors(rng: np.random.Generator, rows: int, challenger_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Squared errors of both models on the same rows: shared difficulty, the challenger's scaled."""
    base = rng.gamma(1.0, 0.15, rows)
    return base * rng.uniform(0.9, 1.1, rows), base * challenger_scale * rng.uniform(0.9, 1.1, rows)


def test_a_clearly_better_challenger_is_promoted_and_a_clearly_worse_one_dropped():
    rng = np.random.default_rng(1)
    verdict = decide_challenger(*errors(rng, 300, 0.7), waited_hours=1.0, **RULE)
    assert verdict.action == "promote" and verdict.evidence is not None and verdict.evidence.low > 0
    verdict = decide_challenger(*errors(rng, 300, 1.8), waited_hours=1.0, **RULE)
    assert verdict.action == "reject" and "worse beyond noise" in verdict.message


def test_too_few_labels_waits_and_says_how_many_more_then_expires():
    rng = np.random.default_rng(2)
    verdict = decide_challenger(*errors(rng, 40, 0.5), waited_hours=1.0, **RULE)
    assert (verdict.action, verdict.more_needed) == ("wait", 60)
    assert "needs 60 more labelled requests" in verdict.message
    assert (
        decide_challenger(*errors(rng, 40, 0.5), waited_hours=None, **RULE).action == "wait"
    )  # the wait has not started
    expired = decide_challenger(*errors(rng, 40, 0.5), waited_hours=73.0, **RULE)
    assert expired.action == "expire"


def test_an_indistinguishable_challenger_waits_with_an_estimate_then_expires():
    rng = np.random.default_rng(3)
    champion_se, challenger_se = errors(rng, 200, 1.0)
    verdict = decide_challenger(champion_se, challenger_se, waited_hours=1.0, **RULE)
    assert verdict.action == "wait" and verdict.more_needed is not None and verdict.more_needed > 0
    assert f"needs about {verdict.more_needed:,} more labelled requests" in verdict.message
    assert decide_challenger(champion_se, challenger_se, waited_hours=100.0, **RULE).action == "expire"
    identical = decide_challenger(champion_se, champion_se, waited_hours=1.0, **RULE)
    assert (
        identical.action == "wait"
        and identical.more_needed is None
        and "no number of labelled requests" in identical.message
    )


def test_labels_needed_is_the_first_count_whose_time_uniform_interval_clears_zero():
    gain = np.array([0.1, 0.3] * 50)  # mean 0.2, sd ~0.1005: already clear
    assert labels_needed(gain, 0.95, 100) == 1  # at least one more
    noisy = np.array([1.0, -0.9] * 50)  # mean 0.05, sd ~0.955
    needed = labels_needed(noisy, 0.95, 100)
    assert needed is not None
    spread = float(np.std(noisy, ddof=1))
    total = len(noisy) + needed
    assert sequence_radius(total, spread, 0.95) < 0.05 <= sequence_radius(total - 1, spread, 0.95)
    assert total > (1.96 * spread / 0.05) ** 2  # wider than the one-look interval, which would need ~1,400
    assert labels_needed(np.array([0.1]), 0.95, 100) == 99


def test_the_time_uniform_interval_is_wider_than_one_look_and_shrinks():
    assert sequence_radius(500, 1.0, 0.95) > 1.96 / np.sqrt(500)
    radii = [sequence_radius(n, 1.0, 0.95) for n in (100, 1_000, 10_000, 100_000)]
    assert radii == sorted(radii, reverse=True) and radii[-1] < 0.02
    evidence = confidence_sequence(np.full(200, 0.5), np.full(200, 0.5), 0.95)  # identical models
    assert (evidence.mean_gain, evidence.low, evidence.high) == (0.0, 0.0, 0.0) and not evidence.beyond_noise
    gain = np.random.default_rng(3).normal(
        0.05, 1.0, 400
    )  # a small gain the one-look interval would call real
    one_look = 1.96 * gain.std(ddof=1) / np.sqrt(len(gain))
    live = confidence_sequence(gain, np.zeros_like(gain), 0.95)
    assert live.high - live.mean_gain == pytest.approx(sequence_radius(400, gain.std(ddof=1), 0.95))
    assert live.high - live.mean_gain > one_look and live.method == "time-uniform paired"
