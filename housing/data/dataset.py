"""Dataset acquisition, validation, storage and the train/test split."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
import urllib.error
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
from sklearn.datasets import fetch_california_housing
from sklearn.model_selection import train_test_split

from housing.config.settings import Settings
from housing.data.artifacts import (
    load_json,
    load_pickle,
    save_json,
    save_pickle,
    write_atomic,
)
from housing.data.digests import file_sha256
from housing.errors import UserError, mask_uri, masked_first_line
from housing.schema import COLUMN_NAMES, FEATURE_NAMES, TARGET, ContractError, validate_frame

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http", "https")
"""The only URLs a data source may be; anything else of the form ``scheme://...`` is refused."""
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")
CHUNK_BYTES = 1 << 16
DEFAULT_TIMEOUT: float = Settings.model_fields["download_timeout"].default
DEFAULT_MAX_BYTES: int = Settings.model_fields["download_max_bytes"].default


class DataSourceError(UserError):
    """The data source cannot be read."""


@dataclass(frozen=True)
class RawSource:
    """The bytes of a data source as read, and how to name it in a sentence (credentials masked)."""

    payload: bytes
    what: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


def read_source(
    source: str | None, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES
) -> pd.DataFrame:
    """Read the raw dataset from a local CSV path or an http(s) URL (at most ``max_bytes``, ``timeout``
    seconds), or from scikit-learn's downloader when ``source`` is None."""
    if source is None:
        return _fetch_from_sklearn()
    return parse_csv(fetch_source(source, timeout=timeout, max_bytes=max_bytes))


def fetch_source(source: str, *, timeout: float, max_bytes: int) -> RawSource:
    """The bytes of a local file or an http(s) URL; other URL schemes, non-regular files, a source larger
    than ``max_bytes`` and a download slower than ``timeout`` end in one sentence."""
    scheme = _SCHEME.match(source)
    if scheme is not None:
        if scheme["scheme"].lower() not in URL_SCHEMES:
            raise DataSourceError(
                f"data source {mask_uri(source)} is refused: give a local path or an http(s) URL "
                f"({scheme['scheme']}:// sources are not read)"
            )
        return RawSource(_download(source, timeout=timeout, max_bytes=max_bytes), f"URL {mask_uri(source)}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataSourceError(f"data source {path} does not exist")
    if path.is_dir():
        raise DataSourceError(f"data source {path} is a directory, not a CSV file")
    if not path.is_file():
        raise DataSourceError(f"data source {path} is not a regular file (a device, a pipe or a socket)")
    if path.stat().st_size == 0:
        raise DataSourceError(f"data source {path} is an empty file")
    try:
        with path.open("rb") as handle:
            payload = _read_capped(iter(lambda: handle.read(CHUNK_BYTES), b""), max_bytes, f"file {path}")
    except OSError as error:
        raise DataSourceError(
            f"could not read data source {path} ({error.strerror or type(error).__name__})"
        ) from None
    return RawSource(payload, f"file {path}")


def _download(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """GET ``url`` (credentials of a ``user:password@`` URL sent as basic auth; redirects followed to http(s)
    only), refused past ``max_bytes`` or ``timeout`` seconds in all."""
    what = f"URL {mask_uri(url)}"
    deadline = time.monotonic() + timeout
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise DataSourceError(
                    f"could not download data source {what} (the server answered HTTP {response.status_code})"
                )
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise _too_large(what, max_bytes)
            return _read_capped(_until(deadline, response.iter_bytes(), what, timeout), max_bytes, what)
    except httpx.TimeoutException:
        raise _timed_out(what, timeout) from None
    except httpx.HTTPError as error:
        raise DataSourceError(
            f"could not download data source {what} ({masked_first_line(error, url, limit=200)})"
        ) from None


def _until(deadline: float, chunks: Iterator[bytes], what: str, timeout: float) -> Iterator[bytes]:
    """``chunks``, refused once ``deadline`` passes (a server that trickles bytes gets no more time than one
    that stalls)."""
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        yield chunk


def _read_capped(chunks: Iterable[bytes], max_bytes: int, what: str) -> bytes:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if len(buffer) > max_bytes:
            raise _too_large(what, max_bytes)
    return bytes(buffer)


def _too_large(what: str, max_bytes: int) -> DataSourceError:
    return DataSourceError(
        f"data source {what} is larger than the {max_bytes:,}-byte limit (HOUSING_DOWNLOAD_MAX_BYTES)"
    )


def _timed_out(what: str, timeout: float) -> DataSourceError:
    return DataSourceError(
        f"could not download data source {what} within {timeout:g} s (HOUSING_DOWNLOAD_TIMEOUT)"
    )


def parse_csv(raw: RawSource) -> pd.DataFrame:
    """The CSV in ``raw`` as a frame. Errors name the problem (and a line number) but never quote the content:
    parser messages can hold a line of the file, and a header with none of the contract's columns is not
    shown.
    """
    try:
        frame = pd.read_csv(io.BytesIO(raw.payload), float_precision="round_trip")
    except pd.errors.EmptyDataError:
        raise DataSourceError(f"data source {raw.what} is empty") from None
    except UnicodeDecodeError:
        raise DataSourceError(f"data source {raw.what} is not a text CSV file") from None
    except ValueError as error:  # pandas' ParserError and the like
        line = re.search(r"\bline (\d+)", str(error))
        where = f"at line {line[1]}" if line else type(error).__name__
        raise DataSourceError(f"data source {raw.what} is not a readable CSV ({where})") from None
    if not any(name in COLUMN_NAMES for name in frame.columns):
        raise DataSourceError(
            f"data source {raw.what} has none of the columns {', '.join(COLUMN_NAMES)} in its "
            f"first line ({frame.shape[1]} column(s) found): is it the California housing CSV?"
        )
    return frame


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
    """sha256 of the source's bytes as read (file or download); None for scikit-learn's downloader."""
    written_at: str


def load_and_store(
    source: str | None,
    dataset_path: Path,
    manifest_path: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DatasetManifest:
    """Read ``source`` (a local path or an http(s) URL, at most ``max_bytes`` within ``timeout`` seconds),
    validate it against the contract, then write the CSV and its manifest atomically.

    Nothing is written unless the whole dataset is valid, so the previous artifact survives bad input. The
    manifest, the log lines and the error sentences name the source with its credentials masked.
    """
    described = mask_uri(source) if source is not None else "sklearn.datasets.fetch_california_housing"
    logger.info("reading %s", described)
    raw = fetch_source(source, timeout=timeout, max_bytes=max_bytes) if source is not None else None
    try:
        frame = validate_frame(parse_csv(raw) if raw is not None else _fetch_from_sklearn())
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
        source_sha256=raw.sha256 if raw is not None else None,
        written_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    save_json(manifest.__dict__, manifest_path)
    logger.info("wrote %s (%d rows, sha256 %s)", dataset_path, manifest.rows, manifest.sha256[:12])
    return manifest


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
    """Split features and target into train and test parts (the original report's ``train_test_split``
    call)."""
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
    for file_name, part in zip(
        Split.FILES, (split.x_train, split.x_test, split.y_train, split.y_test), strict=True
    ):
        save_pickle(part, split_dir / file_name)
    save_json(
        {**provenance, "train_rows": len(split.x_train), "test_rows": len(split.x_test)},
        split_dir / "split.json",
    )


def load_split(split_dir: Path) -> Split:
    """Read the split preprocess wrote; a clear error if it is missing."""
    missing = [name for name in Split.FILES if not (split_dir / name).exists()]
    if missing:
        raise UserError(
            f"no train/test split in {split_dir} (missing {', '.join(missing)}); run preprocess.py first"
        )
    parts = [load_pickle(split_dir / name) for name in Split.FILES]
    return Split(*parts)
