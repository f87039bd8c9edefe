"""Exponential backoff with full jitter, for reconnect and retry loops."""

from __future__ import annotations

import random


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
