"""The outlier rule and the shared preprocessing, on tiny frames."""

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from housing.features import CLIPPED_COLUMNS, OutlierClipper, build_preprocessor
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES


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
    assert clipper.lower_bounds_[CLIPPED_COLUMNS.index("AveOccup")] == pytest.approx(np.quantile(range(1, 101), 0.05))
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
    assert preprocessor.transform(test)[:, 0].tolist() == pytest.approx([(v - 2.0) / np.std([1, 2, 3]) for v in (100, 200, 300)])


# --- spatial features and out-of-fold neighbour targets -----------------------------------------------
from housing.features import (  # noqa: E402
    CITIES,
    KM_PER_DEGREE_LAT,
    KM_PER_DEGREE_LON,
    NeighborTargetEncoder,
    SpatialFeatures,
)


def random_districts(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = np.column_stack([
        rng.uniform(1, 10, rows), rng.uniform(1, 52, rows), rng.uniform(3, 8, rows), rng.uniform(0.8, 1.3, rows),
        rng.uniform(100, 3000, rows), rng.uniform(1.5, 4, rows), rng.uniform(32.6, 41.9, rows), rng.uniform(-124.3, -114.4, rows),
    ])
    return values, rng.uniform(0.5, 5, rows)


def test_spatial_features_match_their_definition():
    values, _ = random_districts(50)
    out = SpatialFeatures(angles=(30,)).fit(values).transform(values)
    lat, lon = values[:, 6], values[:, 7]
    theta = np.deg2rad(30)
    assert np.allclose(out[:, :8], values)
    assert np.allclose(out[:, 8], lon * np.cos(theta) + lat * np.sin(theta))
    assert np.allclose(out[:, 9], lat * np.cos(theta) - lon * np.sin(theta))
    la, lo = CITIES["los_angeles"]
    assert np.allclose(out[:, 10], np.hypot((lat - la) * KM_PER_DEGREE_LAT, (lon - lo) * KM_PER_DEGREE_LON))
    assert np.allclose(out[:, -4], values[:, 2] / values[:, 5])
    assert out.shape[1] == len(SpatialFeatures(angles=(30,)).fit(values).get_feature_names_out())


def brute_force_neighbour_mean(train: np.ndarray, targets: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    def km(v: np.ndarray) -> np.ndarray:
        return np.column_stack([v[:, 6] * KM_PER_DEGREE_LAT, v[:, 7] * KM_PER_DEGREE_LON])

    distances = np.linalg.norm(km(query)[:, None, :] - km(train)[None, :, :], axis=2)
    return targets[np.argsort(distances, axis=1)[:, :k]].mean(axis=1)


def test_neighbour_means_of_new_rows_come_from_training_rows_only():
    train, targets = random_districts(400, seed=1)
    test, _ = random_districts(30, seed=2)
    encoder = NeighborTargetEncoder(ks=(5, 20), spread_k=20).fit(train, targets)
    out = encoder.transform(test)
    assert np.allclose(out[:, 8], brute_force_neighbour_mean(train, targets, test, 5))
    assert np.allclose(out[:, 11], brute_force_neighbour_mean(train, targets, test, 20))
    assert np.array_equal(encoder.targets_, targets)  # all it stores is the training targets


def test_training_rows_never_see_their_own_target():
    """Out of fold: a training row's features don't move when its own target does."""
    train, targets = random_districts(400, seed=3)
    encoder = NeighborTargetEncoder(ks=(5, 20), spread_k=20, folds=5, random_state=0)
    before = encoder.fit_transform(train, targets)
    changed = targets.copy()
    changed[17] = 1000.0
    after = NeighborTargetEncoder(ks=(5, 20), spread_k=20, folds=5, random_state=0).fit_transform(train, changed)
    assert np.array_equal(before[17], after[17])
    assert not np.array_equal(before, after)  # other rows do see it: it is a real neighbour value


def test_encoder_refuses_too_few_rows_and_survives_a_round_trip():
    import skops.io

    from housing.serialization import SKOPS_TRUSTED_TYPES

    train, targets = random_districts(400, seed=4)
    with pytest.raises(ValueError, match="needs at least"):
        NeighborTargetEncoder().fit(train[:50], targets[:50])
    encoder = NeighborTargetEncoder().fit(train, targets)
    loaded = skops.io.loads(skops.io.dumps(encoder), trusted=list(SKOPS_TRUSTED_TYPES))
    assert np.array_equal(loaded.transform(train[:10]), encoder.transform(train[:10]))
