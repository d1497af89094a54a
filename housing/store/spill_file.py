"""A spill file: the append-only JSON-lines file where one process's prediction-log rows wait on disk, its
lock, and the replay of files left by processes that are gone (format and locking: housing.store.spill)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)


SPILL_PREFIX = "prediction_log-"


SPILL_SUFFIX = ".jsonl"


READ_CHUNK_BYTES = 1 << 20
"""Bytes read at a time when replaying (a spilled row is about 300 bytes)."""


ORPHAN_SCAN_SECONDS = 10.0
"""How often a healthy writer looks for spill files left by processes that are gone."""


def encode_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows as JSON lines, one array per row."""
    dumps, option = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    return b"".join([dumps(row, option=option) + b"\n" for row in rows])


def read_rows(fd: int, offset: int, max_rows: int) -> tuple[list[list[Any]], int]:
    """Up to ``max_rows`` complete lines of the file ``fd`` from byte ``offset``, decoded, and the offset
    after them.

    A last line without its newline (being written, or torn by a crash) is left for later; an undecodable line
    is skipped with a warning."""
    rows: list[list[Any]] = []
    while len(rows) < max_rows:
        data = os.pread(fd, READ_CHUNK_BYTES, offset)
        position = 0
        while len(rows) < max_rows:
            end = data.find(b"\n", position)
            if end < 0:
                break
            try:
                rows.append(orjson.loads(data[position:end]))
            except orjson.JSONDecodeError:
                logger.warning(
                    "prediction log spill: skipped an unreadable line at byte %d", offset + position
                )
            position = end + 1
        if position == 0:
            break
        offset += position
    return rows, offset


def spill_prefix(database: str) -> str:
    """The name prefix of the spill files of the database at URL ``database`` (rendered without its
    password)."""
    return f"{SPILL_PREFIX}{hashlib.sha256(database.encode()).hexdigest()[:12]}-"


def fsync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpillFile:
    """This process's spill file: created and locked on the first spill, kept (and locked) until
    :meth:`close`."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory, self.prefix = directory, prefix
        self.path: Path | None = None
        self.size = 0
        """Bytes written; callers serialise :meth:`append` and :meth:`reset`."""
        self._fd: int | None = None
        self._dirty = False

    def _open(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{self.prefix}{os.getpid()}-{os.urandom(4).hex()}"
            hidden = self.directory / f".{name}.tmp"
            fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            try:
                fcntl.flock(
                    fd, fcntl.LOCK_EX | fcntl.LOCK_NB
                )  # before the name is visible: never taken for an orphan
                path = self.directory / f"{name}{SPILL_SUFFIX}"
                os.rename(hidden, path)
                fsync_directory(self.directory)
            except OSError:
                os.close(fd)
                hidden.unlink(missing_ok=True)
                raise
            self._fd, self.path, self.size = fd, path, 0
            logger.warning("prediction log: spilling rows to %s until the database takes them", path)
        return self._fd

    def append(self, rows: Sequence[Sequence[Any]]) -> None:
        """Write ``rows`` at the end of the file (not yet fsynced); raises OSError, leaving the file as it
        was."""
        data = encode_rows(rows)
        fd = self._open()
        view, written = memoryview(data), 0
        try:
            while written < len(data):
                written += os.write(fd, view[written:])
        except OSError:
            if written:
                os.ftruncate(fd, self.size)
            raise
        self.size += len(data)
        self._dirty = True

    def read(self, offset: int, max_rows: int) -> tuple[list[list[Any]], int]:
        """Complete rows from ``offset`` (see :func:`read_rows`); none when nothing was spilled."""
        return read_rows(self._fd, offset, max_rows) if self._fd is not None else ([], offset)

    def sync(self) -> None:
        """fsync what was written since the last call (once per flush interval, not per row)."""
        if self._fd is not None and self._dirty:
            self._dirty = False
            os.fsync(self._fd)

    def reset(self) -> None:
        """Empty the file once the database holds all of it; the file and its lock stay for the next
        outage."""
        if self._fd is not None and self.size:
            os.ftruncate(self._fd, 0)
            self.size = 0

    def close(self) -> None:
        """Release the file: deleted when empty, else fsynced and left for the next process to replay."""
        if self._fd is None:
            return
        if self.size == 0 and self.path is not None:
            self.path.unlink(missing_ok=True)
        else:
            os.fsync(self._fd)
            logger.warning(
                "prediction log: %s keeps rows the database has not taken; the next start replays it",
                self.path,
            )
        os.close(self._fd)
        self._fd = None


def orphan_paths(directory: Path, prefix: str, own: Path | None) -> list[Path]:
    """Spill files in ``directory`` named ``prefix*`` other than ``own``, oldest first (their owners may be
    alive: see :func:`claim`)."""
    try:
        paths = [path for path in directory.glob(f"{prefix}*{SPILL_SUFFIX}") if path != own]
    except OSError:
        return []
    stamped = []
    for path in paths:
        try:
            stamped.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # replayed and deleted by another process meanwhile
            continue
    return [path for _, path in sorted(stamped)]


def claim(path: Path) -> int | None:
    """A descriptor of ``path`` holding its lock when no live process owns it; None when one does, or when
    another process replayed and deleted it meanwhile. The caller replays, unlinks ``path``, then closes the
    descriptor.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)
        return None
    return fd


def replay_orphans(
    directory: Path, prefix: str, own: Path | None, insert: Callable[[list[list[Any]]], None], max_rows: int
) -> int:
    """Replay every spill file of ``prefix`` in ``directory`` whose owner is gone through ``insert`` (chunks
    of ``max_rows`` rows, in file order), deleting each once it is all in; the number of rows replayed. An
    error of ``insert`` propagates and leaves the file (and its lock) for a later attempt."""
    replayed = 0
    for path in orphan_paths(directory, prefix, own):
        fd = claim(path)
        if fd is None:
            continue
        try:
            offset = rows_in_file = 0
            while True:
                rows, next_offset = read_rows(fd, offset, max_rows)
                if not rows:
                    break
                insert(rows)
                offset, rows_in_file = next_offset, rows_in_file + len(rows)
            if os.fstat(fd).st_size > offset:
                logger.warning(
                    "prediction log spill: %s ends with a torn line (its writer died mid-write); skipped",
                    path.name,
                )
            path.unlink()
            replayed += rows_in_file
            logger.info(
                "prediction log: replayed %d row(s) spilled by a process that is gone (%s)",
                rows_in_file,
                path.name,
            )
        finally:
            os.close(fd)
    return replayed


def row_restorer(dialect: str, width: int) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """Turns a spilled row (JSON values) back into the driver's values: ``width`` values (a row spilled by an
    older release, before columns were added, gets NULL in them), created_at a datetime again, except on
    SQLite, whose rows hold it as text."""

    def restore(row: Sequence[Any]) -> tuple[Any, ...]:
        values = list(row) + [None] * (width - len(row))
        if dialect != "sqlite":
            values[1] = datetime.fromisoformat(values[1])
        return tuple(values)

    return restore
