"""The test split never leaks into the features a model is trained on (real data, real split)."""

import numpy as np

from housing.config.settings import get_settings
from housing.data.dataset import split_dataset
from housing.training.candidates import build_pipeline, load_candidate_specs


def test_the_fitted_pipeline_holds_only_training_rows_and_is_deterministic(real_frame):
    x_train, x_test, y_train, _ = split_dataset(real_frame, test_size=0.2, random_state=42)
    spec = load_candidate_specs(get_settings().candidates_path, ["lightgbm_spatial"])[0]
    pipeline = build_pipeline(spec, outlier_quantiles=(0.001, 0.999), estimator_scale=0.05).fit(
        x_train, y_train
    )
    encoder = pipeline.named_steps["neighbors"]
    # The neighbour lookup used for test rows and requests holds the training rows and their targets only.
    assert np.array_equal(encoder.targets_, y_train.to_numpy())
    assert np.array_equal(encoder.incomes_, x_train["MedInc"].to_numpy())
    assert len(encoder.positions_) == len(x_train)
    # Same seed, same data: the same model.
    refit = build_pipeline(spec, outlier_quantiles=(0.001, 0.999), estimator_scale=0.05).fit(x_train, y_train)
    assert np.array_equal(refit.predict(x_test), pipeline.predict(x_test))


def test_training_features_are_out_of_fold_on_the_real_split(real_frame):
    """Change the targets of every row in one of the encoder's folds: those rows' features must not move
    at all (they only ever see the other folds), while the other rows' features do."""
    from sklearn.model_selection import KFold

    x_train, _, y_train, _ = split_dataset(real_frame, test_size=0.2, random_state=42)
    spec = load_candidate_specs(get_settings().candidates_path, ["lightgbm_spatial"])[0]

    def features(targets: np.ndarray) -> np.ndarray:
        prefix = build_pipeline(spec, outlier_quantiles=(0.001, 0.999), estimator_scale=0.05)[
            :-2
        ]  # up to the encoder
        return prefix.fit_transform(x_train, targets)

    encoder = build_pipeline(spec, outlier_quantiles=(0.001, 0.999), estimator_scale=0.05).named_steps[
        "neighbors"
    ]
    _, fold_rows = next(KFold(encoder.folds, shuffle=True, random_state=encoder.random_state).split(x_train))
    changed = y_train.to_numpy().copy()
    changed[fold_rows] += 10.0
    before, after = features(y_train.to_numpy()), features(changed)
    assert np.array_equal(before[fold_rows], after[fold_rows])
    others = np.setdiff1d(np.arange(len(x_train)), fold_rows)
    assert not np.array_equal(before[others], after[others])
