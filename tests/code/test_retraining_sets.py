"""What a retraining run trains and is judged on, built from a tiny synthetic split and labelled traffic."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from housing.config.settings import Settings
from housing.data.dataset import Split
from housing.errors import UserError
from housing.monitoring.retraining import age_weights, build_retraining_sets, effective_rows, traffic_share
from housing.schema import FEATURE_NAMES, TARGET

SETTINGS = Settings(
    retrain_holdout_share=0.3,
    retrain_traffic_weight=0.9,
    retrain_traffic_ramp_rows=10,
    gate_min_labelled_rows=5,
    retrain_traffic_half_life_days=30,
)
START = datetime(2024, 1, 1, tzinfo=UTC)
NOW = START + timedelta(hours=1)


def features(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({name: rng.uniform(1.0, 10.0, rows).round(3) for name in FEATURE_NAMES})


def split(train_rows: int = 40, test_rows: int = 12) -> Split:
    x_train, x_test = features(train_rows, seed=1), features(test_rows, seed=2)
    return Split(
        x_train=x_train,
        x_test=x_test,
        y_train=pd.Series(np.linspace(1, 4, train_rows), name=TARGET.name),
        y_test=pd.Series(np.linspace(1, 4, test_rows), name=TARGET.name),
    )


def labelled(rows: int, seed: int = 3, start: datetime = START) -> pd.DataFrame:
    """New labelled districts in shuffled order: row i was served i minutes after ``start``, its label is 10 +
    i."""
    frame = features(rows, seed)
    frame[TARGET.name] = 10.0 + np.arange(rows)
    frame["created_at"] = [start + timedelta(minutes=i) for i in range(rows)]
    frame["request_id"] = [f"{seed:04d}{i:028d}" for i in range(rows)]
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


NOTHING = labelled(0)


def build(
    new: pd.DataFrame,
    remembered: pd.DataFrame = NOTHING,
    settings: Settings = SETTINGS,
    base: Split | None = None,
):
    return build_retraining_sets(base or split(), remembered, new, settings, base_source="data.csv", now=NOW)


def test_the_newest_new_rows_are_held_out_for_evaluation():
    new = labelled(20)
    sets = build(new)
    held_out = math.ceil(20 * 0.3)  # 6 newest
    assert sets.manifest["new_traffic_train_rows"] == 14 and sets.manifest["traffic_eval_rows"] == held_out
    assert sets.training.y_train.iloc[40:].tolist() == [
        10.0 + i for i in range(14)
    ]  # the oldest 14, oldest first
    assert sets.training.y_test.iloc[12:].tolist() == [10.0 + i for i in range(14, 20)]  # the newest 6
    newest = new.sort_values("created_at").iloc[-held_out:]
    pd.testing.assert_frame_equal(
        sets.evaluation.x.iloc[12:].reset_index(drop=True), newest[list(FEATURE_NAMES)].reset_index(drop=True)
    )
    assert len(sets.training.x_train) == 40 + 14 == sets.manifest["rows"]
    assert sets.training.source == "data.csv + prediction log"
    assert list(sets.eval_traffic["request_id"]) == list(newest["request_id"])
    assert len(sets.train_traffic) == 14


def test_too_few_held_out_rows_are_not_judged_on():
    sets = build(
        labelled(12), settings=SETTINGS.model_copy(update={"gate_min_labelled_rows": 5})
    )  # 4 held out < 5
    assert sets.manifest["traffic_eval_rows"] == 0 and len(sets.evaluation.x) == 12  # the test split alone
    assert "alone (4 new labelled rows are fewer than 5: not judged on)" in sets.evaluation.description
    assert len(sets.eval_traffic) == 4  # still recorded as used by this run


def test_remembered_traffic_is_trained_on_again_and_decays_with_age():
    remembered = labelled(10, seed=5, start=NOW - timedelta(days=30))  # exactly one half-life old
    sets = build(labelled(20), remembered=remembered)
    assert sets.manifest["remembered_traffic_rows"] == 10 and len(sets.train_traffic) == 10 + 14
    weights = sets.training.train_weight
    assert weights is not None
    old, fresh = weights[40:50], weights[50:]
    assert old.mean() / fresh.mean() == pytest.approx(0.5, rel=0.01)  # a row one half-life old counts half


def test_test_rows_the_traffic_trained_on_are_not_scored():
    base = split()
    new = labelled(20).sort_values("created_at").reset_index(drop=True)
    new.loc[0, list(FEATURE_NAMES)] = base.x_test.iloc[4].to_numpy()  # an old row: goes to training
    new.loc[19, list(FEATURE_NAMES)] = base.x_test.iloc[
        7
    ].to_numpy()  # the newest row: held out, not trained on
    sets = build(new, base=base)
    assert sets.manifest["test_rows_kept"] == 11
    scored = sets.evaluation.x.iloc[:11]
    assert not (scored == base.x_test.iloc[4]).all(axis=1).any()
    assert (scored == base.x_test.iloc[7]).all(axis=1).sum() == 1
    assert sets.evaluation.sample_weight is not None
    assert len(sets.evaluation.x) == len(sets.evaluation.y) == len(sets.evaluation.sample_weight) == 11 + 6
    assert sets.evaluation.y.iloc[:11].tolist() == base.y_test.drop(index=4).tolist()


def test_test_rows_the_remembered_traffic_trained_on_are_not_scored_either():
    base = split()
    remembered = labelled(10, seed=5, start=NOW - timedelta(days=3))
    remembered.loc[2, list(FEATURE_NAMES)] = base.x_test.iloc[
        9
    ].to_numpy()  # production already learnt this district
    sets = build(labelled(20), remembered=remembered, base=base)
    assert sets.manifest["test_rows_kept"] == 11
    assert not (sets.evaluation.x.iloc[:11] == base.x_test.iloc[9]).all(axis=1).any()
    assert sets.evaluation.y.iloc[:11].tolist() == base.y_test.drop(index=9).tolist()
    assert (sets.training.x_train == base.x_test.iloc[9]).all(axis=1).sum() == 1  # trained on, once


@pytest.mark.parametrize("rows", [20, 30, 200])
def test_traffic_weight_grows_with_its_size_up_to_the_cap(rows):
    sets = build(labelled(rows))
    train_weight, eval_weight = sets.training.train_weight, sets.evaluation.sample_weight
    assert train_weight is not None and eval_weight is not None
    np.testing.assert_array_equal(train_weight[:40], 1.0)
    trained = rows - math.ceil(rows * 0.3)
    share = train_weight[40:].sum() / train_weight.sum()
    assert share == pytest.approx(0.9 * trained / (trained + 10)) and share < 0.9
    held = math.ceil(rows * 0.3)
    assert eval_weight[12:].sum() / eval_weight.sum() == pytest.approx(0.9 * held / (held + 10))
    assert sets.training.test_weight is eval_weight


def test_a_handful_of_rows_carries_little_weight():
    assert traffic_share(15, cap=0.9, ramp_rows=200) < 0.07  # 15 rows: under 7 % of the weight
    assert traffic_share(1000, cap=0.9, ramp_rows=200) == pytest.approx(0.75)
    assert traffic_share(1e9, cap=0.9, ramp_rows=200) < 0.9


def test_effective_rows_and_age_weights():
    assert effective_rows(np.ones(50)) == pytest.approx(50)
    assert effective_rows(np.array([1.0] + [0.0] * 49)) == pytest.approx(1)
    assert effective_rows(np.array([])) == 0
    moments = pd.Series([NOW, NOW - timedelta(days=30), NOW - timedelta(days=60), NOW + timedelta(days=1)])
    np.testing.assert_allclose(age_weights(moments, NOW, 30), [1.0, 0.5, 0.25, 1.0])


def test_the_digest_follows_the_data():
    new = labelled(20)
    first = build(new)
    again = build(new.sample(frac=1.0, random_state=9))
    assert (
        first.manifest["sha256"] == again.manifest["sha256"] == first.training.data_sha256
    )  # the row order of the log does not matter
    changed = new.copy()
    changed.loc[changed["created_at"] == START, TARGET.name] += 1.0  # one training label
    assert build(changed).manifest["sha256"] != first.manifest["sha256"]
    assert (
        build(new, settings=SETTINGS.model_copy(update={"retrain_traffic_weight": 0.5})).manifest["sha256"]
        != first.manifest["sha256"]
    )
    assert len(first.evaluation.digest) == 16


def test_fewer_than_ten_new_districts_are_refused():
    with pytest.raises(UserError, match="only 9 new labelled districts; retraining needs at least 10"):
        build(labelled(9))
    assert build(labelled(10)).manifest["held_out_new_rows"] == 3


def test_a_market_move_re_expresses_old_sales_at_todays_price_level():
    new = labelled(40)
    rng = np.random.default_rng(0)
    new["prediction"] = (
        new[TARGET.name] / 1.3 * rng.normal(1.0, 0.05, len(new))
    )  # labels 30 % above what production said
    sets = build(new)
    step = sets.manifest["price_index_step"]
    assert step == pytest.approx(1.3, rel=0.03) and sets.manifest["price_index"] == pytest.approx(step)
    np.testing.assert_allclose(
        sets.training.y_train.iloc[:40], split().y_train * step
    )  # the training split, re-indexed
    np.testing.assert_allclose(
        sets.evaluation.y.iloc[:12], split().y_test * step
    )  # and the test split the gate scores on
    assert sets.training.provenance["price_index"] == f"{step:.6f}"
    on_top = build(new, base=None).manifest["price_index"]
    assert build_retraining_sets(
        split(), NOTHING, new, SETTINGS, base_source="x", now=NOW, base_index=1.1
    ).manifest["price_index"] == (
        pytest.approx(1.1 * on_top)
    )  # on top of the index production was trained with


def test_no_market_move_leaves_old_labels_alone():
    new = labelled(40)
    new["prediction"] = new[TARGET.name] * np.random.default_rng(1).normal(1.0, 0.05, len(new))  # unbiased
    sets = build(new)
    assert (
        sets.manifest["price_index"] == 1.0
        and "(not applied)" in sets.training.provenance["price_index_step"]
    )
    np.testing.assert_allclose(sets.training.y_train.iloc[:40], split().y_train)


def test_only_the_training_split_may_become_neighbour_targets():
    sets = build(labelled(20), remembered=labelled(10, seed=5))
    reference = sets.training.reference_rows
    assert reference is not None and reference.dtype == bool
    assert reference[:40].all() and not reference[40:].any() and len(reference) == 40 + 10 + 14


def test_a_price_step_larger_than_a_retrain_may_apply_is_refused_in_one_sentence():
    new = labelled(40).assign(
        prediction=lambda frame: frame[TARGET.name] / 1.6
    )  # labels 1.6x what was served
    with pytest.raises(UserError, match=r"re-price old ones by x1\.6000, more than the x1\.3500"):
        build_retraining_sets(
            split(), NOTHING, new, SETTINGS, base_source="data.csv", now=NOW, max_price_step=1.35
        )
    approved = build_retraining_sets(
        split(), NOTHING, new, SETTINGS, base_source="data.csv", now=NOW, max_price_step=1.6
    )
    assert approved.manifest["price_index"] == pytest.approx(1.6)
