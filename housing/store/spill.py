"""Where prediction-log rows wait before the database takes them: a capped memory buffer that spills to local
disk.

:class:`SpillingBuffer` keeps rows in memory, in arrival order, with an index of their request ids. Past its
cap, or while the database is failing (the writer says so) or a flush is stalled, it moves them, and every row
after them, to this process's spill file until the writer has replayed all of it into the database; then rows
wait in memory again.

Each API process spills to its own append-only file in the spill folder,
``prediction_log-<db>-<pid>-<random>.jsonl`` (``<db>``: a digest of the database URL without its password, so
rows only ever go to the database they were logged for, even when several logs share an artifacts folder): one
JSON array per line, the values in the order of :data:`housing.store.prediction_log.PREDICTION_COLUMNS` (times
as ISO 8601 strings). A batch of rows is written whole by one ``os.write`` (``O_APPEND``) and the writer
thread fsyncs the file once per flush interval: a kill -9 loses nothing already written (the kernel holds it),
a power cut at most one interval. A write that fails half-way is cut back, so a full disk never leaves a torn
line.

The owner holds an exclusive ``flock`` on its file for its whole life, taken before the file gets its visible
name. A file whose lock another process can take therefore belongs to a process that is gone (killed, or shut
down while the database was down): that process replays it into the database and deletes it while still
holding the lock, so two processes never replay the same file. Replaying twice after a crash is harmless:
inserts skip stored ids.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)

SPILL_PREFIX, SPILL_SUFFIX = "prediction_log-", ".jsonl"
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


class SpillingBuffer:
    """Rows waiting for the database, oldest first: in memory (at most ``max_rows``, None: no cap), or in the
    spill file in ``spill_dir`` (None: nothing spills) named after the ``database`` URL. One writer takes
    batches (:meth:`take_batch`), replays the spill (:meth:`replay`) and marks its database work
    (:attr:`busy_since`): work lasting longer than ``stall_seconds`` counts as a failure for new rows."""

    def __init__(
        self, *, max_rows: int | None, spill_dir: Path | None, database: str, stall_seconds: float
    ) -> None:
        self.max_rows, self.spill_dir, self.stall_seconds = max_rows, spill_dir, stall_seconds
        self.lock = threading.Lock()
        self.prefix = spill_prefix(database)
        self.spill = SpillFile(spill_dir, self.prefix) if spill_dir is not None else None
        self.spilling = False
        """Rows go to the spill file until the writer has replayed all of it."""
        self.spilled_rows = 0
        self.error: str | None = None
        """Why the spill cannot be written, when it cannot."""
        self._rows: list[tuple[Any, ...]] = []
        self._ids: set[str] = set()  # request ids in memory or in flight: feedback's O(1) lookup
        self._inflight: list[tuple[Any, ...]] | None = None
        self._inflight_spilled = False
        self.busy_since: float | None = None
        """When the writer's current database work began (None: idle)."""
        self._replay_offset = 0
        self._next_orphan_scan = 0.0

    @property
    def memory_rows(self) -> int:
        return len(self._rows)

    @property
    def pending_rows(self) -> int:
        """Rows not yet in the database: in memory, in flight (unless spilled too) and in the spill file."""
        inflight = len(self._inflight) if self._inflight is not None and not self._inflight_spilled else 0
        return len(self._rows) + inflight + self.spilled_rows

    def contains(self, request_id: str) -> bool:
        """Whether ``request_id`` waits in memory or in flight (O(1))."""
        with self.lock:
            return request_id in self._ids

    def append(self, rows: Sequence[tuple[Any, ...]]) -> bool:
        """Queue ``rows``: to the spill while spilling, past the cap or while a flush is stalled; in memory
        otherwise, or when the spill cannot be written but the cap allows. False, nothing queued, when neither
        can take them.
        """
        with self.lock:
            if self.spilling or self._must_spill(len(rows)):
                if self._divert(rows):
                    return True
                if self.max_rows is not None and len(self._rows) + len(rows) > self.max_rows:
                    return False
            self._rows.extend(rows)
            self._ids.update(row[0] for row in rows)
            return True

    def _must_spill(self, incoming: int) -> bool:
        if self.max_rows is not None and len(self._rows) + incoming > self.max_rows:
            return True
        return self.busy_since is not None and time.monotonic() - self.busy_since > self.stall_seconds

    def _divert(self, rows: Sequence[tuple[Any, ...]]) -> bool:
        """Append the rows in memory (the batch in flight unless spilled already, then the buffer) and
        ``rows`` to the spill, in that order, and keep spilling (caller holds the lock). False, all left as it
        was, when it cannot.
        """
        if self.spill is None:
            self.error = "no spill folder is set"
            return False
        inflight = self._inflight if self._inflight is not None and not self._inflight_spilled else []
        moving = [*inflight, *self._rows, *rows]
        if moving:
            try:
                self.spill.append(moving)
            except OSError as error:
                if self.error is None:
                    logger.error("prediction log: cannot spill rows to %s (%s)", self.spill_dir, error)
                self.error = f"{self.spill_dir}: {error.strerror or error}"
                return False
        self._inflight_spilled = self._inflight is not None
        self._ids.difference_update(row[0] for row in (*inflight, *self._rows))
        self._rows = []
        self.spilled_rows += len(moving)
        self.spilling = True
        self.error = None
        return True

    def divert_memory(self) -> None:
        """The database is failing: move what memory holds to the spill (kept in memory if the spill cannot be
        written)."""
        with self.lock:
            if self._rows or (self._inflight is not None and not self._inflight_spilled):
                self._divert(())

    def take_batch(self) -> list[tuple[Any, ...]]:
        """Everything in memory, now in flight until :meth:`batch_written` or :meth:`batch_failed`."""
        with self.lock:
            batch, self._rows = self._rows, []
            if batch:
                self._inflight, self._inflight_spilled = batch, False
            return batch

    def batch_written(self, batch: list[tuple[Any, ...]]) -> None:
        with self.lock:
            self._inflight = None
            self._ids.difference_update(row[0] for row in batch)

    def batch_failed(self, batch: list[tuple[Any, ...]]) -> None:
        """The batch in flight was not written: to the spill, followed by the buffer, or back to the front of
        memory."""
        with self.lock:
            if not self._inflight_spilled and not self._divert(()):
                self._rows[:0] = batch
            self._inflight = None

    def replay(self, insert: Callable[[list[list[Any]]], None], max_rows: int) -> int:
        """Insert the spill's backlog in order, ``max_rows`` at a time; once all of it is in, empty the file
        and stop spilling. The number of rows inserted; an error of ``insert`` propagates, keeping the rest
        for a later call.
        """
        replayed = 0
        while self.spilling and self.spill is not None:
            rows, offset = self.spill.read(self._replay_offset, max_rows)
            if not rows:
                with self.lock:  # appends to the spill happen under the lock: this read sees its end
                    rows, offset = self.spill.read(self._replay_offset, max_rows)
                    if not rows:
                        self.spill.reset()
                        self._replay_offset = self.spilled_rows = 0
                        self.spilling = False
                        break
            insert(rows)
            with self.lock:
                self._replay_offset = offset
                self.spilled_rows = max(0, self.spilled_rows - len(rows))
            replayed += len(rows)
        return replayed

    def replay_orphans(self, insert: Callable[[list[list[Any]]], None], max_rows: int) -> int:
        """Every :data:`ORPHAN_SCAN_SECONDS`, replay the spill files of processes that are gone
        (:func:`replay_orphans`)."""
        if self.spill_dir is None or time.monotonic() < self._next_orphan_scan:
            return 0
        self._next_orphan_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
        return replay_orphans(
            self.spill_dir, self.prefix, self.spill.path if self.spill is not None else None, insert, max_rows
        )

    def sync(self) -> None:
        """fsync the spill file (the writer calls it once per flush interval)."""
        if self.spill is None:
            return
        try:
            self.spill.sync()
        except OSError as error:
            self.error = f"{self.spill_dir}: {error.strerror or error}"


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
