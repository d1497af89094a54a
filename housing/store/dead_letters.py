"""Rows the database refuses for good go to a dead-letter file, so that one bad row never blocks the others.

A flush inserts its rows in one transaction; a row the database refuses (a constraint or a value it cannot
store: a NaN where a number is required, a name longer than its column) would fail that transaction every
time, and the spill behind it would grow forever. When a batch fails that way, its rows are inserted one at a
time: the good ones go in at once, and each refused row counts a failure. A row refused ``tries`` times is
appended to ``dead-letters-<db>.jsonl`` in the spill folder (one JSON array per line, like the spill
file) and counted on ``/metrics`` (``housing_log_dead_letter_rows_total``); nothing else is held up by it.
An outage (the database unreachable) is not a refusal: those rows wait in the spill as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from housing.store.spill_file import encode_rows

logger = logging.getLogger(__name__)


class DeadLetters:
    """Failure counts of refused rows, and the file the rows refused ``tries`` times go to."""

    def __init__(self, folder: Path | None, tries: int, prefix: str = "dead-letters") -> None:
        self.folder, self.tries, self.prefix = folder, tries, prefix
        self._failures: dict[str, int] = {}
        self.rows = 0
        """Rows written to the dead-letter file by this process."""

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / f"{self.prefix}.jsonl"

    def refused(self, rows: Sequence[Sequence[Any]], reasons: Sequence[str]) -> list[Sequence[Any]]:
        """Count one more refusal of each row; the rows refused ``tries`` times are written to the file and
        returned (forgotten from then on); the others are left to be tried again."""
        dead: list[Sequence[Any]] = []
        for row, reason in zip(rows, reasons, strict=True):
            request_id = str(row[0])
            failures = self._failures.get(request_id, 0) + 1
            if failures < self.tries:
                self._failures[request_id] = failures
                continue
            self._failures.pop(request_id, None)
            dead.append(row)
            logger.error(
                "prediction log: row %s refused %d times (%s): moved to the dead-letter file",
                request_id,
                failures,
                reason,
            )
        if dead:
            self._write(dead)
        return dead

    def _write(self, rows: Sequence[Sequence[Any]]) -> None:
        self.rows += len(rows)
        if self.folder is None:
            logger.error(
                "prediction log: no spill folder for the dead-letter file; %d row(s) dropped", len(rows)
            )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # type: ignore[arg-type]
        try:
            os.write(descriptor, encode_rows(rows))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
