"""Per-client limits on what a client may ask of one API worker per second: rows to predict, labels to send.

A token bucket per key (a client's or a labeller's name): ``burst`` units at most, refilled at ``rate``
units per second. A request takes what it needs or is refused whole with the seconds until it would fit
(a 429 with ``Retry-After``). At most ``max_keys`` buckets are kept, the least recently used dropped first,
so a flood of new client addresses cannot grow memory. Each worker keeps its own buckets: with N workers a
client gets up to N times the rate, which a deployment sets the rate for.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict


class RateLimiter:
    """Token buckets by key: :meth:`take` ``amount`` units now, or learn how long to wait."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (units, when)
        self._lock = threading.Lock()

    def take(self, key: str, amount: float, now: float | None = None) -> float:
        """Take ``amount`` units of ``key``'s bucket: 0.0 when taken, else the seconds until they would be
        there (nothing taken). An amount larger than the burst waits for a full bucket."""
        now = time.monotonic() if now is None else now
        with self._lock:
            units, when = self._buckets.pop(key, (self.burst, now))
            units = min(self.burst, units + (now - when) * self.rate)
            needed = min(amount, self.burst)
            if units >= needed:
                units -= needed
                wait = 0.0
            else:
                wait = (needed - units) / self.rate
            self._buckets[key] = (units, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait


def retry_after(wait: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
