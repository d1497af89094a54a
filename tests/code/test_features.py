"""The outlier rule, the shared preprocessing and the neighbour encoder's guarantees, on tiny frames."""

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES
from housing.training.features import (
    CLIPPED_COLUMNS,
    NeighborTargetEncoder,
    OutlierClipper,
    build_preprocessor,
)


def frame_with(column: str, values: list[float]) -> pd.DataFrame:
    frame = pd.DataFrame([EXAMPLE_REQUEST] * len(values))
    frame[column] = values
    return frame


def test_clipped_columns_are_the_heavy_tailed_ones():
    assert CLIPPED_COLUMNS == ("AveRooms", "AveBedrms", "Population", "AveOccup")


def test_bounds_come_from_fit_data_only_and_apply_to_new_rows():
    train = frame_with("AveOccup", [float(v) for v in range(1, 101)])
    clipper = OutlierClipper(quantiles=(0.05, 0.95)).fit(train)
    occup = list(FEATURE_NAMES).index("AveOccup")
    assert clipper.lower_bounds_[CLIPPED_COLUMNS.index("AveOccup")] == pytest.approx(
        np.quantile(range(1, 101), 0.05)
    )
    served = clipper.transform(frame_with("AveOccup", [1000.0, 0.5, 50.0]))
    assert served[:, occup].tolist() == pytest.approx([95.05, 5.95, 50.0])


def test_unclipped_columns_pass_through_unchanged():
    train = frame_with("Latitude", [32.6, 35.0, 41.9])
    clipper = OutlierClipper(quantiles=(0.4, 0.6)).fit(train)
    assert clipper.transform(train)[:, list(FEATURE_NAMES).index("Latitude")].tolist() == [32.6, 35.0, 41.9]


def test_no_rows_are_dropped_and_input_is_not_modified():
    train = frame_with("Population", [10.0, 20.0, 30_000.0])
    before = train.copy()
    out = OutlierClipper(quantiles=(0.0, 0.5)).fit_transform(train)
    assert out.shape == (3, 8)
    pd.testing.assert_frame_equal(train, before)


def test_transform_before_fit_fails():
    with pytest.raises(NotFittedError):
        OutlierClipper().transform(frame_with("MedInc", [1.0]))


def test_scaler_is_fitted_on_the_given_rows_only():
    train = frame_with("MedInc", [1.0, 2.0, 3.0])
    test = frame_with("MedInc", [100.0, 200.0, 300.0])
    preprocessor = build_preprocessor((0.001, 0.999)).fit(train)
    scaler = preprocessor.named_steps["scaler"]
    assert scaler.mean_[0] == pytest.approx(2.0)
    assert preprocessor.transform(test)[:, 0].tolist() == pytest.approx(
        [(v - 2.0) / np.std([1, 2, 3]) for v in (100, 200, 300)]
    )


# --- out-of-fold neighbour targets (every column's definition: test_feature_definitions.py) ---------------
def random_districts(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = np.column_stack(
        [
            rng.uniform(1, 10, rows),
            rng.uniform(1, 52, rows),
            rng.uniform(3, 8, rows),
            rng.uniform(0.8, 1.3, rows),
            rng.uniform(100, 3000, rows),
            rng.uniform(1.5, 4, rows),
            rng.uniform(32.6, 41.9, rows),
            rng.uniform(-124.3, -114.4, rows),
        ]
    )
    return values, rng.uniform(0.5, 5, rows)


def test_encoder_stores_the_training_rows_only():
    """The neighbour values of served rows come from what the logged model carries: the training rows'
    locations, incomes and targets (every output column's definition: test_feature_definitions.py)."""
    train, targets = random_districts(400, seed=1)
    encoder = NeighborTargetEncoder(ks=(5, 20), spread_k=20).fit(train, targets)
    assert np.array_equal(encoder.targets_, targets)
    assert np.array_equal(encoder.incomes_, train[:, 0])
    assert encoder.positions_.shape == (400, 2)


def test_training_rows_never_see_their_own_target():
    """Out of fold: a training row's features don't move when its own target does."""
    train, targets = random_districts(400, seed=3)
    encoder = NeighborTargetEncoder(ks=(5, 20), spread_k=20, folds=5, random_state=0)
    before = encoder.fit_transform(train, targets)
    changed = targets.copy()
    changed[17] = 1000.0
    after = NeighborTargetEncoder(ks=(5, 20), spread_k=20, folds=5, random_state=0).fit_transform(
        train, changed
    )
    assert np.array_equal(before[17], after[17])
    assert not np.array_equal(before, after)  # other rows do see it: it is a real neighbour value


def test_encoder_refuses_too_few_rows_and_survives_a_round_trip():
    import skops.io

    from housing.registry.model_files import SKOPS_TRUSTED_TYPES

    train, targets = random_districts(400, seed=4)
    with pytest.raises(ValueError, match="needs at least"):
        NeighborTargetEncoder().fit(train[:50], targets[:50])
    encoder = NeighborTargetEncoder().fit(train, targets)
    loaded = skops.io.loads(skops.io.dumps(encoder), trusted=list(SKOPS_TRUSTED_TYPES))
    assert np.array_equal(loaded.transform(train[:10]), encoder.transform(train[:10]))


def test_invented_districts_sent_as_traffic_never_become_neighbour_targets():
    """A retrain names the reference rows (the training split): 60 invented districts at one place,
    labelled 100, are encoded from the reference districts around them but move no neighbour mean there."""
    reference, targets = random_districts(400, seed=5)
    invented = np.tile(reference[:1], (60, 1))  # all at the first district's place
    rows = np.vstack([reference, invented])
    labels = np.concatenate([targets, np.full(60, 100.0)])
    mask = np.arange(len(rows)) < len(reference)
    guarded = NeighborTargetEncoder(ks=(5, 20), spread_k=20, random_state=0)
    encoded = guarded.fit_transform(rows, labels, reference_rows=mask)
    alone = NeighborTargetEncoder(ks=(5, 20), spread_k=20, random_state=0)
    expected = alone.fit_transform(reference, targets)
    assert np.array_equal(guarded.targets_, targets)  # nothing of the traffic stored
    assert np.array_equal(encoded[: len(reference)], expected)  # the reference rows as without the traffic
    assert np.array_equal(encoded[len(reference) :], alone.transform(invented))  # traffic: reference targets
    assert np.array_equal(guarded.transform(reference[:1]), alone.transform(reference[:1]))  # that place
    unguarded = NeighborTargetEncoder(ks=(5, 20), spread_k=20, random_state=0).fit(rows, labels)
    assert unguarded.transform(reference[:1])[0, 8] > 50  # without it the invented labels own the place
