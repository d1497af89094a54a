"""What a retraining run trains and is judged on, built from a tiny synthetic split and labelled traffic."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from housing.config import Settings
from housing.data import Split
from housing.errors import UserError
from housing.retraining import build_retraining_sets
from housing.schema import FEATURE_NAMES, TARGET

SETTINGS = Settings(retrain_holdout_share=0.3, retrain_traffic_weight=0.5)
START = datetime(2024, 1, 1, tzinfo=UTC)


def features(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({name: rng.uniform(1.0, 10.0, rows).round(3) for name in FEATURE_NAMES})


def split(train_rows: int = 40, test_rows: int = 12) -> Split:
    x_train, x_test = features(train_rows, seed=1), features(test_rows, seed=2)
    return Split(x_train=x_train, x_test=x_test, y_train=pd.Series(np.linspace(1, 4, train_rows), name=TARGET.name),
                 y_test=pd.Series(np.linspace(1, 4, test_rows), name=TARGET.name))


def labelled(rows: int, seed: int = 3) -> pd.DataFrame:
    """Logged predictions with labels, in shuffled order: row i was served i minutes after START, its label is 10 + i."""
    frame = features(rows, seed)
    frame[TARGET.name] = 10.0 + np.arange(rows)
    frame["created_at"] = [START + timedelta(minutes=i) for i in range(rows)]
    frame["prediction"] = 2.0
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_the_newest_labelled_rows_are_held_out_for_evaluation():
    traffic = labelled(20)
    sets = build_retraining_sets(split(), traffic, SETTINGS, base_source="data.csv")
    held_out = math.ceil(20 * 0.3)  # 6 newest
    assert sets.manifest["traffic_train_rows"] == 14 and sets.manifest["traffic_eval_rows"] == held_out
    assert sets.training.y_train.iloc[40:].tolist() == [10.0 + i for i in range(14)]  # the oldest 14, oldest first
    assert sets.training.y_test.iloc[12:].tolist() == [10.0 + i for i in range(14, 20)]  # the newest 6
    newest = traffic.sort_values("created_at").iloc[-held_out:]
    pd.testing.assert_frame_equal(sets.evaluation.x.iloc[12:].reset_index(drop=True), newest[list(FEATURE_NAMES)].reset_index(drop=True))
    assert len(sets.training.x_train) == 40 + 14 == sets.manifest["rows"]
    assert sets.training.source == "data.csv + prediction log"
    assert sets.training.provenance["traffic_from"] == str(START) and sets.training.provenance["traffic_to"] == str(START + timedelta(minutes=13))


def test_test_rows_the_traffic_trained_on_are_not_scored():
    base = split()
    traffic = labelled(20).sort_values("created_at").reset_index(drop=True)
    traffic.loc[0, list(FEATURE_NAMES)] = base.x_test.iloc[4].to_numpy()  # an old row: goes to training
    traffic.loc[19, list(FEATURE_NAMES)] = base.x_test.iloc[7].to_numpy()  # the newest row: held out, not trained on
    sets = build_retraining_sets(base, traffic, SETTINGS, base_source="data.csv")
    assert sets.manifest["test_rows_kept"] == 11
    scored = sets.evaluation.x.iloc[:11]
    assert not (scored == base.x_test.iloc[4]).all(axis=1).any()
    assert (scored == base.x_test.iloc[7]).all(axis=1).sum() == 1
    assert sets.evaluation.sample_weight is not None
    assert len(sets.evaluation.x) == len(sets.evaluation.y) == len(sets.evaluation.sample_weight) == 11 + 6
    assert sets.evaluation.y.iloc[:11].tolist() == base.y_test.drop(index=4).tolist()


@pytest.mark.parametrize("share", [0.5, 0.2, 0.8])
def test_traffic_carries_its_share_of_the_weight(share):
    settings = Settings(retrain_holdout_share=0.3, retrain_traffic_weight=share)
    sets = build_retraining_sets(split(), labelled(30), settings, base_source="data.csv")
    train_weight, eval_weight = sets.training.train_weight, sets.evaluation.sample_weight
    assert train_weight is not None and eval_weight is not None
    np.testing.assert_array_equal(train_weight[:40], 1.0)
    assert train_weight[40:].sum() / train_weight.sum() == pytest.approx(share)
    np.testing.assert_array_equal(eval_weight[:12], 1.0)
    assert eval_weight[12:].sum() / eval_weight.sum() == pytest.approx(share)
    assert sets.training.test_weight is eval_weight and sets.manifest["traffic_weight_share"] == share
    assert sets.training.provenance["traffic_row_weight"] == f"{train_weight[-1]:.4f}"


def test_the_digest_follows_the_data():
    base, traffic = split(), labelled(20)
    first = build_retraining_sets(base, traffic, SETTINGS, base_source="data.csv")
    again = build_retraining_sets(base, traffic.sample(frac=1.0, random_state=9), SETTINGS, base_source="data.csv")
    assert first.manifest["sha256"] == again.manifest["sha256"] == first.training.data_sha256  # the row order of the log does not matter
    changed = traffic.copy()
    changed.loc[changed["created_at"] == START, TARGET.name] += 1.0  # one training label
    other = build_retraining_sets(base, changed, SETTINGS, base_source="data.csv")
    assert other.manifest["sha256"] != first.manifest["sha256"]
    reweighted = build_retraining_sets(base, traffic, Settings(retrain_holdout_share=0.3, retrain_traffic_weight=0.4), base_source="data.csv")
    assert reweighted.manifest["sha256"] != first.manifest["sha256"]
    assert len(first.evaluation.digest) == 16


def test_fewer_than_ten_labelled_rows_are_refused():
    with pytest.raises(UserError, match="only 9 labelled production rows; retraining needs at least 10"):
        build_retraining_sets(split(), labelled(9), SETTINGS, base_source="data.csv")
    assert build_retraining_sets(split(), labelled(10), SETTINGS, base_source="data.csv").manifest["traffic_eval_rows"] == 3
