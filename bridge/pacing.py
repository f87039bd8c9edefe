"""Pacing of repeated events, shared by every side of the bridge: how soon to try again
(`Backoff`, for reconnect and retry loops) and how often to say so (`RateLimitedLog`, so a
flood of bad input cannot flood the log)."""

from __future__ import annotations

import logging
import random
import time


class Backoff:
    """Delays `uniform(min, min(max, min * 2**n))`: bounded, spread, never a tight loop."""

    def __init__(self, min_delay: float, max_delay: float, rng: random.Random | None = None):
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.max_delay, self.min_delay * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self._rng.uniform(self.min_delay, max(self.min_delay, ceiling))

    def reset(self) -> None:
        self.attempt = 0


class RateLimitedLog:
    """At most `burst` warnings per key per `period` seconds; the rest are summarized."""

    def __init__(self, logger: logging.Logger, burst: int = 5, period: float = 60.0) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self._windows: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.period:
            if count > self.burst:
                self.logger.warning("%d more %r warnings suppressed in the last %.0fs",
                                    count - self.burst, key, now - start)
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if count <= self.burst:
            self.logger.warning(msg, *args)
