"""Stage 2: explore the stored dataset, split it 80/20, fit the outlier rule and the scaler on train only.

Prints the EDA summary, writes the three EDA plots under artifacts/plots/, and writes X_train.pkl,
X_test.pkl, y_train.pkl, y_test.pkl (raw features, names kept) under artifacts/split/; train and promote
read those. outliers.pkl and scaler.pkl beside them are for inspection only (nothing reads them): every
logged model pipeline holds its own outlier rule and scaler, refitted on the same training rows, so they
equal these and serving applies exactly what was trained.
"""

from __future__ import annotations

import argparse
import logging

from housing import cli
from housing.data.artifacts import save_pickle
from housing.data.dataset import Split, read_dataset, read_manifest, save_split, split_dataset
from housing.data.eda import describe_dataset, save_eda_plots
from housing.training.features import build_preprocessor

logger = logging.getLogger("preprocess")


def main(args: argparse.Namespace) -> int:
    settings = cli.settings_from_args(args)
    frame = read_dataset(settings.dataset_path)
    manifest = read_manifest(settings.manifest_path)
    print(describe_dataset(frame))
    for path in save_eda_plots(frame, settings.plots_dir):
        logger.info("wrote %s", path)

    split = Split(*split_dataset(frame, test_size=settings.test_size, random_state=settings.random_state))
    preprocessor = build_preprocessor(settings.outlier_quantiles).fit(split.x_train)
    save_split(
        split,
        settings.split_dir,
        provenance={
            "random_state": settings.random_state,
            "test_size": settings.test_size,
            "dataset_sha256": manifest.sha256,
            "outlier_quantiles": list(settings.outlier_quantiles),
        },
    )
    save_pickle(preprocessor.named_steps["outliers"], settings.split_dir / "outliers.pkl")
    save_pickle(preprocessor.named_steps["scaler"], settings.split_dir / "scaler.pkl")
    print(
        f"split {len(frame):,} rows into {len(split.x_train):,} train / {len(split.x_test):,} test "
        f"(random_state {settings.random_state}); artifacts in {settings.split_dir}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_setting_flags(parser, "random_state", "test_size", "artifacts_dir")
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
