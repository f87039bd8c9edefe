"""How often commands may be sent, and which transaction ids were seen: per-device and
global token buckets, and the memory that makes a repeated transaction a duplicate. Pure
bookkeeping with the clock passed in; `bridge.commands.gateway` asks before sending.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bridge.config.profiles import CommandSettings


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp: float | None = None  # the first look fills it: any clock will do

    def ready(self, now: float) -> bool:
        """Whether a token could be taken now (taking none)."""
        if self.stamp is not None:
            elapsed = max(0.0, now - self.stamp)
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.stamp = now
        return self.tokens >= 1

    def take(self, now: float) -> bool:
        if self.ready(now):
            self.tokens -= 1
            return True
        return False


class Limits:
    """Per-device and global token buckets, and a memory of recent transaction ids.

    A transaction id is held while its request is in flight and remembered for
    `dedup_window` seconds once the request was (or may have been) sent to flespi; a
    request that certainly never left the bridge may be retried under the same id.
    """

    def __init__(self, settings: CommandSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.global_bucket = TokenBucket(settings.global_rate, settings.global_burst)
        self.devices: dict[int, TokenBucket] = {}
        self.seen: dict[tuple[int, Any], float] = {}
        self.in_flight: set[tuple[int, Any]] = set()

    def duplicate(self, device_id: int, transaction: Any, now: float) -> bool:
        key = (device_id, transaction)
        return transaction is not None and (
            key in self.in_flight or self.seen.get(key, 0.0) > now)

    def begin(self, device_id: int, transaction: Any) -> None:
        """The request is about to be sent: a duplicate is refused from now on."""
        if transaction is not None and self.settings.dedup_window:
            self.in_flight.add((device_id, transaction))

    def end(self, device_id: int, transaction: Any, *, sent: bool, now: float) -> None:
        """The request is over; it is remembered if it was (or may have been) sent."""
        if transaction is None:
            return
        self.in_flight.discard((device_id, transaction))
        if sent:
            self.remember(device_id, transaction, now)

    def remember(self, device_id: int, transaction: Any, now: float) -> None:
        if transaction is None or not self.settings.dedup_window:
            return
        if len(self.seen) > 10_000:
            self.seen = {k: t for k, t in self.seen.items() if t > now}
        self.seen[(device_id, transaction)] = now + self.settings.dedup_window

    def allow(self, device_id: int, now: float) -> bool:
        """Take a token from the device's bucket and the global one, or from neither."""
        bucket = self.devices.get(device_id)
        if bucket is None:
            s = self.settings
            bucket = self.devices[device_id] = TokenBucket(s.device_rate, s.device_burst)
        if not (bucket.ready(now) and self.global_bucket.ready(now)):
            return False
        return bucket.take(now) and self.global_bucket.take(now)
