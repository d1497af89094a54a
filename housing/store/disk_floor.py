"""The free-space floor of the prediction log's disk: below it, POST /predict answers 503 before it fills.

A full disk would fail every log write and every spill, so every prediction would become a 503 anyway, and
the database (SQLite on the same disk) could be left unable to checkpoint. The floor refuses new predictions
while there is still room for what is already buffered, with a sentence saying why, and lets them through
again as soon as space returns. The free space of each folder the log writes to on this machine (the spill
folder, a SQLite database's folder) is read at most once a second (``statvfs``: a system call, no I/O).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

MB = 1024 * 1024
CHECK_EVERY_SECONDS = 1.0
"""How often the free space is read again; in between, the last answer stands."""


def free_mb(folder: Path) -> float:
    """Free space, in MB, available to this user on the file system holding ``folder`` (or its nearest
    existing parent: the spill folder may not exist yet)."""
    path = folder
    while not path.exists() and path != path.parent:
        path = path.parent
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize / MB


class DiskFloor:
    """Refuses new predictions while a folder of the log has less than ``min_free_mb`` free (0: never)."""

    def __init__(self, folders: list[Path], min_free_mb: float) -> None:
        self.folders, self.min_free_mb = folders, min_free_mb
        self._refusal: str | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    def refusal(self) -> str | None:
        """Why predictions are refused now (no path named: the client is not to learn the server's layout),
        or None."""
        if self.min_free_mb <= 0 or not self.folders:
            return None
        now = time.monotonic()
        if now < self._next_check:
            return self._refusal
        with self._lock:
            self._next_check = now + CHECK_EVERY_SECONDS
            lowest = min(self._free(folder) for folder in self.folders)
            refusal = (
                f"the prediction log's disk has {lowest:,.0f} MB free, below the floor of"
                f" {self.min_free_mb:,.0f} MB (HOUSING_LOG_MIN_FREE_MB): predictions are refused until space"
                " is freed, so that none is served unlogged"
                if lowest < self.min_free_mb
                else None
            )
            if refusal != self._refusal:
                (logger.error if refusal else logger.info)(
                    "prediction log: %s", refusal or "disk space is back above the floor; serving again"
                )
            self._refusal = refusal
            return refusal

    @staticmethod
    def _free(folder: Path) -> float:
        try:
            return free_mb(folder)
        except OSError:
            return float("inf")  # unreadable: the writes themselves will say what is wrong
