"""Stage 1: fetch the California housing data, validate it against the feature contract, store it.

Writes artifacts/data/california_housing.csv and artifacts/data/manifest.json (source, rows, sha256).
The source is a local CSV file or an http(s) URL, read within a time limit and a size limit; the manifest and
the output name it with its credentials masked (user:***@, token=***).
Bad input ends with one sentence and exit code 2, and leaves the previous artifacts untouched.
"""

from __future__ import annotations

import argparse

from housing import cli
from housing.data.dataset import load_and_store


def main(args: argparse.Namespace) -> int:
    settings = cli.settings_from_args(args)
    manifest = load_and_store(
        settings.data_source,
        settings.dataset_path,
        settings.manifest_path,
        timeout=settings.download_timeout,
        max_bytes=settings.download_max_bytes,
    )
    print(
        f"stored {manifest.rows:,} rows from {manifest.source} at {settings.dataset_path} (sha256"
        f" {manifest.sha256})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source",
        dest="data_source",
        default=None,
        metavar="PATH_OR_URL",
        help=(
            "local CSV file or http(s) URL with the 8 features and MedHouseVal (other URL schemes are"
            " refused; credentials in the URL are masked in the manifest and the output) [env"
            " HOUSING_DATA_SOURCE; default: scikit-learn's fetch_california_housing]"
        ),
    )
    cli.add_setting_flags(parser, "download_timeout", "download_max_bytes", "artifacts_dir")
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
