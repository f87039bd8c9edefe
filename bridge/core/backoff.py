"""Exponential backoff with full jitter, for reconnect and retry loops."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

# Seconds a connection must have lasted before its loss starts the backoff over: a broker
# that accepts the connection and drops it at once (an oversized publication, a session
# taken over, a broker ACL) must not be reconnected to several times a second.
STABLE_AFTER = 30.0


class Backoff:
    """Delays `uniform(min, min(max, min * 2**n))`: bounded, spread, never a tight loop.

    `reset()` says the connection is up; the backoff starts over only if it then stays up
    for `stable_after` seconds. A connection lost sooner keeps counting up, so a loop of
    connect-then-drop backs off like one of failed connects."""

    def __init__(self, min_delay: float, max_delay: float, rng: random.Random | None = None,
                 *, stable_after: float = STABLE_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self.attempt = 0
        self._rng = rng or random.Random()
        self._clock = clock
        self._up_since: float | None = None

    def next(self) -> float:
        if self._up_since is not None:
            if self._clock() - self._up_since >= self.stable_after:
                self.attempt = 0
            self._up_since = None
        ceiling = min(self.max_delay, self.min_delay * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self._rng.uniform(self.min_delay, max(self.min_delay, ceiling))

    def reset(self) -> None:
        """Connected: the next delay starts over from `min_delay` if the connection lasts."""
        self._up_since = self._clock()
