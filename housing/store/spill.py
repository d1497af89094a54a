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

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from housing.store.spill_file import ORPHAN_SCAN_SECONDS, SpillFile, replay_orphans, spill_prefix

logger = logging.getLogger(__name__)


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
        """Rows memory holds: the buffer and the batch in flight (unless spilled already)."""
        inflight = len(self._inflight) if self._inflight is not None and not self._inflight_spilled else 0
        return len(self._rows) + inflight

    @property
    def pending_rows(self) -> int:
        """Rows not yet in the database: in memory, in flight (unless spilled too) and in the spill file."""
        return self.memory_rows + self.spilled_rows

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
                if self.max_rows is not None and self.memory_rows + len(rows) > self.max_rows:
                    return False
            self._rows.extend(rows)
            self._ids.update(row[0] for row in rows)
            return True

    def _must_spill(self, incoming: int) -> bool:
        if self.max_rows is not None and self.memory_rows + incoming > self.max_rows:
            return True  # the batch in flight counts: a failed flush puts it back in memory
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

    def replay(
        self, insert: Callable[[list[list[Any]]], None], max_rows: int, limit: int | None = None
    ) -> int:
        """Insert the spill's backlog in order, ``max_rows`` at a time, at most ``limit`` rows in this call;
        once all of it is in, empty the file and stop spilling. The number of rows inserted; an error of
        ``insert`` propagates, keeping the rest for a later call.
        """
        replayed = 0
        while self.spilling and self.spill is not None and (limit is None or replayed < limit):
            chunk = max_rows if limit is None else min(max_rows, limit - replayed)
            rows, offset = self.spill.read(self._replay_offset, chunk)
            if not rows:
                with self.lock:  # appends to the spill happen under the lock: this read sees its end
                    rows, offset = self.spill.read(self._replay_offset, chunk)
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
