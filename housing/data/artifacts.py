"""Atomic reading and writing of the files stages hand over under ``artifacts/``.

Every write goes to a temporary file in the target's folder and is moved into place with ``os.replace``,
so a reader sees the old file or the new one, never half of one, and a failed stage leaves the previous
good artifact untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically through ``write(handle)`` on a binary file handle."""
    with atomic_path(path) as tmp_path, open(tmp_path, "wb") as handle:
        write(handle)


def save_pickle(obj: Any, path: Path) -> None:
    """Pickle ``obj`` to ``path`` atomically."""
    write_atomic(path, lambda handle: pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL))


def load_pickle(path: Path) -> Any:
    """Load a pickle this project wrote (only our own artifacts: never unpickle untrusted files)."""
    with open(path, "rb") as handle:
        return pickle.load(handle)


def save_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON atomically."""
    payload = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    write_atomic(path, lambda handle: handle.write(payload))


def load_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(path.read_text())
