"""The live policy: whether the challenger in shadow (or canary) beats production on the traffic both scored.

Pure: both models' squared errors on the same labelled requests in, a :class:`ChallengerVerdict` out. The
offline gate's paired rule, with its interval made time-uniform (an asymptotic confidence sequence), because
the monitor judges again every time labels arrive. :mod:`housing.registry.live_verdict` reads the pairs from
the prediction log and applies the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from housing.registry.promotion_policy import GateEvidence


@dataclass(frozen=True)
class ChallengerVerdict:
    """What the live paired evidence says about the challenger: ``promote``, ``reject`` (worse beyond noise),
    ``expire`` (no verdict within the wait) or ``wait``; one sentence why; how many more labelled requests
    a verdict would need at the current difference (None: no number of them would tell the two apart)."""

    action: str
    message: str
    evidence: GateEvidence | None = None
    more_needed: int | None = None


SEQUENCE_TARGET_ROWS = 500
"""Labelled requests at which the live confidence sequence is tightest (it is valid at every count)."""
TIME_UNIFORM = "time-uniform paired"


def sequence_radius(
    rows: int, spread: float, confidence: float, target_rows: int = SEQUENCE_TARGET_ROWS
) -> float:
    """Half-width of the two-sided asymptotic confidence sequence for a mean after ``rows`` observations of
    standard deviation ``spread`` (Robbins' normal mixture, tuned to be tightest at ``target_rows``;
    Waudby-Smith et al., "Time-uniform central limit theory and asymptotic confidence sequences", 2024): with
    probability ``confidence`` the interval holds the true mean at *every* count at once, so looking again
    after each batch of labels does not inflate the error rate the way re-checking a fixed-sample interval
    does."""
    alpha = 1.0 - confidence
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / target_rows
    return spread * math.sqrt(
        2 * (rows * rho2 + 1) / (rows**2 * rho2) * math.log(math.sqrt(rows * rho2 + 1) / alpha)
    )


def confidence_sequence(
    champion_se: np.ndarray, challenger_se: np.ndarray, confidence: float
) -> GateEvidence:
    """The mean gain (champion's minus challenger's squared error per request) with its time-uniform
    interval."""
    gain = np.asarray(champion_se, dtype=np.float64) - np.asarray(challenger_se, dtype=np.float64)
    mean = float(np.mean(gain))
    radius = (
        sequence_radius(len(gain), float(np.std(gain, ddof=1)), confidence) if len(gain) > 1 else math.inf
    )
    return GateEvidence(len(gain), mean, mean - radius, mean + radius, confidence, method=TIME_UNIFORM)


def labels_needed(gain: np.ndarray, confidence: float, min_rows: int) -> int | None:
    """Labelled requests still needed before the time-uniform interval of the mean gain clears zero, if the
    mean and spread of the gain per request stay as observed; at least what ``min_rows`` asks for. None: never
    (no difference).
    """
    rows = len(gain)
    floor = max(min_rows - rows, 0)
    if rows < 2:
        return floor or None
    mean, spread = abs(float(np.mean(gain))), float(np.std(gain, ddof=1))
    if mean == 0 or not np.isfinite(spread):
        return floor or None
    low, high = rows, rows
    while sequence_radius(high, spread, confidence) >= mean:  # the radius shrinks like sqrt(log n / n)
        low, high = high, high * 2
        if high > 10**9:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if sequence_radius(middle, spread, confidence) >= mean else (low, middle)
    return max(floor, high - rows, 1)


def decide_challenger(
    champion_se: np.ndarray,
    challenger_se: np.ndarray,
    *,
    champion: str,
    challenger: str,
    min_rows: int,
    confidence: float,
    waited_hours: float | None,
    max_wait_hours: float,
) -> ChallengerVerdict:
    """The gate's evidence rule on live traffic: both models' squared errors on the same labelled requests,
    paired, with the interval made time-uniform (:func:`confidence_sequence`), because the monitor judges
    again whenever labels arrive (re-checking a fixed-sample interval at every look promotes an equal
    challenger far more often than 1 - ``confidence``: bench/live.py).

    Promote when the challenger's gain's interval lies above zero, reject when it lies below, on at least
    ``min_rows`` requests; otherwise wait, until ``waited_hours`` (since the challenger first scored traffic;
    None: it has not yet) passes ``max_wait_hours``, then expire.
    """
    gain = np.asarray(champion_se, dtype=np.float64) - np.asarray(challenger_se, dtype=np.float64)
    expired = waited_hours is not None and waited_hours > max_wait_hours
    who = f"challenger version {challenger} against production version {champion}"
    if len(gain) < min_rows:
        needed = min_rows - len(gain)
        if expired:
            return ChallengerVerdict(
                "expire",
                f"{who}: only {len(gain):,} paired labelled requests after {waited_hours:.1f} h "
                f"(the wait is {max_wait_hours:g} h, the rule needs {min_rows:,}); the challenger is dropped",
                None,
                needed,
            )
        started = "it has not scored any request yet" if waited_hours is None else f"{len(gain):,} so far"
        return ChallengerVerdict(
            "wait",
            f"{who}: needs {needed:,} more labelled requests before live evidence can decide "
            f"(the rule needs {min_rows:,}; {started})",
            None,
            needed,
        )
    evidence = confidence_sequence(champion_se, challenger_se, confidence)
    if evidence.beyond_noise:
        return ChallengerVerdict(
            "promote",
            f"{who}: better beyond noise on live traffic ({evidence.describe()}); promoted",
            evidence,
        )
    if evidence.high < 0:
        return ChallengerVerdict(
            "reject",
            f"{who}: worse beyond noise on live traffic ({evidence.describe()}); the challenger is dropped",
            evidence,
        )
    more_needed = labels_needed(gain, confidence, min_rows)
    more = (
        "no number of labelled requests would tell them apart at the current difference"
        if more_needed is None
        else f"needs about {more_needed:,} more labelled requests at the current difference"
    )
    if expired:
        return ChallengerVerdict(
            "expire",
            f"{who}: no verdict after {waited_hours:.1f} h (the wait is {max_wait_hours:g} h; "
            f"{evidence.describe()}; it {more}); the challenger is dropped",
            evidence,
            more_needed,
        )
    return ChallengerVerdict(
        "wait", f"{who}: not yet distinguishable ({evidence.describe()}); it {more}", evidence, more_needed
    )
