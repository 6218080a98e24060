"""Per-token token buckets: a burst is allowed, the sustained rate is bounded."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may go on, what is left, and how long to wait if not."""

    allowed: bool
    remaining: int
    retry_after_s: float


class RateLimiter:
    """One bucket per key (the token id); `take` is O(1) and needs no lock (single event loop)."""

    def __init__(self, *, rate_per_second: float, burst: int) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("rate_per_second must be > 0 and burst >= 1")
        self.rate = rate_per_second
        self.burst = burst
        self._buckets: dict[int, _Bucket] = {}

    def take(self, key: int) -> Decision:
        """Spend one request from `key`'s bucket."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Decision(allowed=True, remaining=int(bucket.tokens), retry_after_s=0.0)
        return Decision(allowed=False, remaining=0, retry_after_s=(1.0 - bucket.tokens) / self.rate)
