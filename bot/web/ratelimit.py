"""Per-key rate limits (token buckets) for requests from the open internet.

A widget on a public page can be scripted by anyone; limits per visitor and per IP keep one
abuser from filling the queue everyone else waits in.
"""

from __future__ import annotations

import time
from typing import Callable


class RateLimiter:
    """Allows `per_minute` events per key, refilled continuously; bursts up to `per_minute`."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    def check(self, key: str) -> float | None:
        """Take one token for `key`: None when allowed, else seconds until the next one."""
        now = self.clock()
        tokens, updated = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - updated) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._forget_full(now)
        return None

    def _forget_full(self, now: float) -> None:
        """Drop keys whose bucket has refilled: they carry no state worth keeping."""
        for key, (tokens, updated) in list(self._buckets.items()):
            if tokens + (now - updated) * self.rate >= self.capacity:
                del self._buckets[key]


class WidgetLimits:
    """The widget's per-address and per-visitor rate limiters (one set per server)."""

    def __init__(self, per_ip: int, per_visitor: int) -> None:
        self.ip = RateLimiter(per_ip)
        self.visitor = RateLimiter(per_visitor)
