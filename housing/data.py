"""Dataset acquisition, validation, storage and the train/test split."""

from __future__ import annotations

import io
import logging
import urllib.error
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from sklearn.datasets import fetch_california_housing
from sklearn.model_selection import train_test_split

from housing.artifacts import (
    load_json,
    load_pickle,
    save_json,
    save_pickle,
    write_atomic,
)
from housing.digests import file_sha256
from housing.errors import UserError, first_line
from housing.schema import FEATURE_NAMES, TARGET, ContractError, validate_frame

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http", "https", "ftp", "file")


class DataSourceError(UserError):
    """The data source cannot be read."""


def read_source(source: str | None) -> pd.DataFrame:
    """Read the raw dataset from a CSV path or URL, or from scikit-learn's downloader when ``source`` is None."""
    if source is None:
        return _fetch_from_sklearn()
    if urlparse(source).scheme in URL_SCHEMES:
        return _read_csv(source, what=f"URL {source}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataSourceError(f"data source {path} does not exist")
    if path.is_dir():
        raise DataSourceError(f"data source {path} is a directory, not a CSV file")
    if path.stat().st_size == 0:
        raise DataSourceError(f"data source {path} is an empty file")
    return _read_csv(path, what=f"file {path}")


def _read_csv(target: str | Path, *, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(target, float_precision="round_trip")
    except pd.errors.EmptyDataError:
        raise DataSourceError(f"data source {what} is empty") from None
    except pd.errors.ParserError as error:
        raise DataSourceError(f"data source {what} is not a readable CSV ({first_line(error)})") from None
    except UnicodeDecodeError:
        raise DataSourceError(f"data source {what} is not a text CSV file") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise DataSourceError(f"could not download data source {what} ({reason})") from None


def _fetch_from_sklearn() -> pd.DataFrame:
    try:
        return fetch_california_housing(as_frame=True).frame
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or error
        raise DataSourceError(
            f"could not download the dataset with scikit-learn's fetch_california_housing ({reason}); "
            "give a CSV path or URL with --source or HOUSING_DATA_SOURCE"
        ) from None


@dataclass(frozen=True)
class DatasetManifest:
    """Provenance of the stored dataset."""

    source: str
    rows: int
    sha256: str
    """sha256 of the stored CSV (what every later stage reads)."""
    source_sha256: str | None
    """sha256 of the source file's bytes, when the source is a local file."""
    written_at: str


def load_and_store(source: str | None, dataset_path: Path, manifest_path: Path) -> DatasetManifest:
    """Read ``source``, validate it against the contract, then write the CSV and its manifest atomically.

    Nothing is written unless the whole dataset is valid, so the previous artifact survives bad input.
    """
    described = source if source is not None else "sklearn.datasets.fetch_california_housing"
    logger.info("reading %s", described)
    raw = read_source(source)
    try:
        frame = validate_frame(raw)
    except ContractError as error:
        raise ContractError(f"data source {described}: {error}") from None
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    payload = buffer.getvalue().encode()
    write_atomic(dataset_path, lambda handle: handle.write(payload))
    manifest = DatasetManifest(
        source=described,
        rows=len(frame),
        sha256=file_sha256(dataset_path),
        source_sha256=_local_file_sha256(source),
        written_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    save_json(manifest.__dict__, manifest_path)
    logger.info("wrote %s (%d rows, sha256 %s)", dataset_path, manifest.rows, manifest.sha256[:12])
    return manifest


def _local_file_sha256(source: str | None) -> str | None:
    if source is None or urlparse(source).scheme in URL_SCHEMES:
        return None
    return file_sha256(Path(source).expanduser())


def read_dataset(dataset_path: Path) -> pd.DataFrame:
    """Read the dataset load_data stored, re-checked against the contract."""
    if not dataset_path.exists():
        raise UserError(f"no dataset at {dataset_path}; run load_data.py first")
    return validate_frame(pd.read_csv(dataset_path, float_precision="round_trip"))


def read_manifest(manifest_path: Path) -> DatasetManifest:
    """Read the manifest load_data wrote next to the dataset."""
    if not manifest_path.exists():
        raise UserError(f"no dataset manifest at {manifest_path}; run load_data.py first")
    return DatasetManifest(**load_json(manifest_path))


def split_dataset(
    frame: pd.DataFrame, *, test_size: float, random_state: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Split features and target into train and test parts (the seed's ``train_test_split`` call)."""
    features = frame.loc[:, list(FEATURE_NAMES)]
    target = frame[TARGET.name]
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=test_size, random_state=random_state
    )
    return x_train, x_test, y_train, y_test


@dataclass(frozen=True)
class Split:
    """The train/test split preprocess hands to train and promote (raw features, names kept)."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series

    FILES = ("X_train.pkl", "X_test.pkl", "y_train.pkl", "y_test.pkl")


def save_split(split: Split, split_dir: Path, *, provenance: dict[str, object]) -> None:
    """Write the four split pickles and ``split.json`` (seed, sizes, dataset sha256) atomically."""
    for file_name, part in zip(Split.FILES, (split.x_train, split.x_test, split.y_train, split.y_test), strict=True):
        save_pickle(part, split_dir / file_name)
    save_json(
        {**provenance, "train_rows": len(split.x_train), "test_rows": len(split.x_test)},
        split_dir / "split.json",
    )


def load_split(split_dir: Path) -> Split:
    """Read the split preprocess wrote; a clear error if it is missing."""
    missing = [name for name in Split.FILES if not (split_dir / name).exists()]
    if missing:
        raise UserError(f"no train/test split in {split_dir} (missing {', '.join(missing)}); run preprocess.py first")
    parts = [load_pickle(split_dir / name) for name in Split.FILES]
    return Split(*parts)
