"""Stage 1: fetch the California housing data, validate it against the feature contract, store it.

Writes artifacts/data/california_housing.csv and artifacts/data/manifest.json (source, rows, sha256).
Bad input ends with one sentence and exit code 2, and leaves the previous artifacts untouched.
"""

from __future__ import annotations

import argparse

from housing import cli
from housing.data import load_and_store


def main(args: argparse.Namespace) -> int:
    settings = cli.settings_from_args(args)
    manifest = load_and_store(settings.data_source, settings.dataset_path, settings.manifest_path)
    print(f"stored {manifest.rows:,} rows from {manifest.source} at {settings.dataset_path} (sha256 {manifest.sha256})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source",
        dest="data_source",
        default=None,
        metavar="PATH_OR_URL",
        help="CSV file or URL with the 8 features and MedHouseVal "
        "[env HOUSING_DATA_SOURCE; default: scikit-learn's fetch_california_housing]",
    )
    cli.add_setting_flags(parser, "artifacts_dir")
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
