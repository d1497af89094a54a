"""Prediction intervals without a server or the dataset: the conformal quantile, Wilson's interval, the
window's coverage, the served range (compiled trees equal LightGBM's, the data's range respected, the online
state applied by region), and the online state moved by labels in a real SQLite log."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from housing.errors import UserError
from housing.monitoring.coverage import wilson, window_coverage
from housing.schema import FEATURE_NAMES, TARGET
from housing.serving.intervals import OnlineScale, SegmentScale, after_label, serve_interval
from housing.store.interval_state import LabelOutcome, read_state, record_label
from housing.training.intervals import conformal_quantile, fit_interval, read_interval, save_interval
from tests.helpers import tiny_dataset


def test_the_conformal_quantile_is_the_finite_sample_order_statistic():
    scores = np.arange(1.0, 101.0)  # 1..100
    assert conformal_quantile(scores, 0.9) == 91.0  # ceil(0.9 x 101) = 91st smallest
    assert conformal_quantile(scores[:9], 0.9) == 9.0  # too few scores: the largest
    weighted = conformal_quantile(np.array([1.0, 2.0, 3.0]), 0.5, np.array([10.0, 1.0, 1.0]))
    assert weighted == 1.0  # the heavy first score holds most of the weight


def test_wilsons_interval_matches_its_formula_and_stays_within_0_and_1():
    low, high = wilson(90, 100)
    assert (round(low, 4), round(high, 4)) == (0.8256, 0.9448)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson(10, 10)[1] == 1.0


def calibrated(rows: int = 3_000):
    """An interval calibrated on synthetic out-of-fold errors that grow with income."""
    frame = tiny_dataset(rows)
    rng = np.random.default_rng(1)
    frame["Latitude"] = rng.uniform(33.0, 41.0, rows)
    frame["Longitude"] = rng.uniform(-123.0, -115.0, rows)
    oof = frame[TARGET.name].to_numpy() + rng.normal(0, 0.05 + 0.05 * frame["MedInc"].to_numpy())
    return frame, fit_interval(frame[list(FEATURE_NAMES)], frame[TARGET.name], oof, 0.9), oof


def test_a_served_range_is_the_calibrated_one_compiled_cut_to_the_data_holding_its_centre_moved_by_region():
    frame, calibration, oof = calibrated()
    values = frame[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    served = serve_interval(calibration, price_index=1.0)
    assert served.compiled
    low, high = served.bounds(values, oof)
    below, above = calibration.offsets(values, oof)
    np.testing.assert_allclose(low, np.minimum(np.clip(oof - below, 0.14999, 5.00001), oof), atol=1e-9)
    np.testing.assert_allclose(high, np.maximum(np.clip(oof + above, 0.14999, 5.00001), oof), atol=1e-9)
    beyond_low, beyond_high = served.bounds(values[:2], np.array([5.3, 0.1]))  # beyond the data's range
    assert beyond_low[0] < beyond_high[0] == 5.3 and beyond_low[1] == 0.1 < beyond_high[1]
    widths = high - low
    rich = frame["MedInc"].to_numpy() > 7
    assert widths[rich].mean() > widths[~rich].mean()  # harder districts, wider ranges
    served.online = OnlineScale(
        SegmentScale(0.0, math.log(2.0), 10), {"Bay Area": SegmentScale(0.2, 0.0, 60)}
    )
    moved_low, moved_high = served.bounds(values, oof)
    bay = (
        (values[:, 6] >= 37.1) & (values[:, 6] <= 38.4) & (values[:, 7] >= -123.1) & (values[:, 7] <= -121.5)
    )
    assert bay.any() and (~bay).any()
    moved = np.exp(0.2)  # the Bay Area's centre moves up 22 %, and so does the data's range there
    np.testing.assert_allclose(
        moved_low[bay],
        np.minimum(
            np.clip(moved * oof[bay] - below[bay], 0.14999 * moved, 5.00001 * moved), moved * oof[bay]
        ),
        atol=1e-9,
    )
    doubled = (moved_high - moved_low)[~bay]
    assert np.all(doubled >= widths[~bay] - 1e-9) and doubled.mean() > 1.5 * widths[~bay].mean()


def test_the_window_coverage_counts_labels_inside_their_served_range():
    frame = pd.DataFrame(
        {
            **{name: [3.0] * 4 for name in FEATURE_NAMES},
            "Latitude": [37.8] * 4,
            "Longitude": [-122.4] * 4,
            TARGET.name: [1.0, 2.0, 3.0, np.nan],
            "interval_low": [0.5, 2.5, 2.0, 0.0],
            "interval_high": [1.5, 3.0, 4.0, 9.0],
        }
    )
    found = window_coverage(frame, 0.9)
    assert found.overall is not None
    assert (found.overall.rows, found.overall.coverage) == (3, pytest.approx(2 / 3))
    assert found.overall.mean_width == pytest.approx((1.0 + 0.5 + 2.0) / 3)
    assert found.by_segment == {}  # no segment has 30 labelled rows
    assert window_coverage(frame.drop(columns=["interval_low", "interval_high"]), 0.9).overall is None


def test_labels_move_the_shared_state_misses_widen_hits_narrow_and_the_centre_follows(log):
    for _ in range(20):  # a market move: every label 1.3x its prediction, outside its range
        record_label(log.engine, LabelOutcome("7", "Bay Area", True, math.log(1.3)), 0.9)
    state = read_state(log.engine, "7")
    assert state.overall.labels == 20 and state.regions["Bay Area"].labels == 20
    assert state.overall.width == pytest.approx(20 * 0.05 * 0.9)  # each miss: +0.05 x (1 - 0.1)
    assert 0 < state.overall.shift < math.log(1.3) and state.overall.shift > 0.6 * math.log(1.3)
    for _ in range(10):
        record_label(log.engine, LabelOutcome("7", "Los Angeles", False, 0.0), 0.9)
    after = read_state(log.engine, "7")
    assert after.overall.width == pytest.approx(0.9 - 10 * 0.05 * 0.1)  # each hit: -0.05 x 0.1
    assert after.regions["Los Angeles"].labels == 10 and after.regions["Bay Area"].labels == 20
    assert read_state(log.engine, "8") == OnlineScale()  # another version: its own fresh state


def test_the_database_moves_the_state_as_the_pure_step_does(log):
    labels = [(True, 0.3), (False, 0.1), (True, -0.2), (False, 0.0), (False, 0.05)]
    expected = SegmentScale()
    for missed, ratio in labels:
        record_label(log.engine, LabelOutcome("9", "San Diego", missed, ratio), 0.9)
        expected = after_label(expected, missed, ratio, 0.9)
    stored = read_state(log.engine, "9")
    assert stored.overall.labels == expected.labels
    assert stored.overall.shift == pytest.approx(expected.shift) and stored.overall.width == pytest.approx(
        expected.width
    )


def test_no_run_of_labels_moves_a_range_beyond_its_limits(log):
    """A labeller sending 400 wild labels (every one a miss, 10x the prediction) widens the range at most
    x4 and moves its centre at most x2; 400 labels equal to the prediction narrow it at most /4. The
    database and the pure step agree at the limits."""
    expected = SegmentScale()
    for _ in range(400):
        record_label(log.engine, LabelOutcome("11", "San Diego", True, math.log(10.0)), 0.9)
        expected = after_label(expected, True, math.log(10.0), 0.9)
    wild = read_state(log.engine, "11").overall
    assert (wild.shift, wild.width) == (pytest.approx(math.log(2.0)), pytest.approx(math.log(4.0)))
    assert (expected.shift, expected.width) == (pytest.approx(wild.shift), pytest.approx(wild.width))
    for _ in range(400):
        record_label(log.engine, LabelOutcome("12", "San Diego", False, 0.0), 0.9)
    assert read_state(log.engine, "12").overall.width == pytest.approx(-math.log(4.0))


@pytest.mark.parametrize(
    "change",
    [
        {"level": 7},
        {"income_corrections": [0.1]},
        {"region_corrections": [0.1] * 9},
        {"income_corrections": [0.1, float("nan"), 0.2]},
    ],
    ids=["level", "too few bands", "too many regions", "not a number"],
)
def test_a_saved_interval_with_a_number_out_of_place_is_refused_in_one_sentence(tmp_path, change):
    """The compiled kernel indexes the corrections by segment code: a file whose lists do not hold one
    number per segment would make it read past them, so loading refuses it."""
    _, calibration, _ = calibrated(1_000)
    save_interval(calibration, tmp_path)
    numbers = json.loads((tmp_path / "interval.json").read_text())
    (tmp_path / "interval.json").write_text(json.dumps({**numbers, **change}))
    with pytest.raises(UserError, match="has inconsistent numbers"):
        read_interval(tmp_path, "a version")
    (tmp_path / "interval.json").write_text(json.dumps(numbers))
    assert read_interval(tmp_path, "a version").level == calibration.level
