"""Content hashes, defined once: of a file's bytes, and of a data set (features, target, weights)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from housing.schema import FEATURE_NAMES, TARGET


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def frame_sha256(x: pd.DataFrame, y: pd.Series, weights: np.ndarray | None = None) -> str:
    """Hex sha256 of a data set: the rows of ``x`` with ``y`` as the target column (index ignored), then the
    weights."""
    rows = pd.util.hash_pandas_object(x.assign(**{TARGET.name: np.asarray(y)}), index=False).to_numpy()
    digest = hashlib.sha256(rows.tobytes())
    if weights is not None:
        digest.update(np.asarray(weights, dtype=np.float64).tobytes())
    return digest.hexdigest()


def row_digests(features: pd.DataFrame) -> pd.Series:
    """One 16-hex-digit digest per row of the 8 features: identical feature rows (the same district) get the
    same one."""
    hashed = pd.util.hash_pandas_object(features.loc[:, list(FEATURE_NAMES)].astype(np.float64), index=False)
    return pd.Series([f"{value:016x}" for value in hashed.to_numpy()], index=features.index, dtype=object)
