"""Reconnect backoff (`bridge.core.backoff`) cannot spin on a broker that accepts a
connection and drops it at once (bounds and jitter: tests/integration/test_reliability.py)."""

from __future__ import annotations

import random

from bridge.core.backoff import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ceilings(backoff: Backoff, n: int) -> list[float]:
    """The upper bound of each of the next `n` delays (the attempt's ceiling)."""
    out = []
    for _ in range(n):
        out.append(min(backoff.max_delay, backoff.min_delay * 2 ** backoff.attempt))
        backoff.next()
    return out


def test_a_connection_dropped_right_after_connecting_keeps_backing_off() -> None:
    """Issue 21: the broker accepted every CONNECT and dropped the connection within
    milliseconds; resetting on each CONNECT made ~4 reconnects a second forever."""
    clock = Clock()
    backoff = Backoff(0.5, 30, random.Random(2), stable_after=30, clock=clock)
    total = 0.0
    for _ in range(10):  # connect, drop within a second, wait the backoff
        backoff.reset()
        clock.now += 0.2
        delay = backoff.next()
        clock.now += delay
        total += delay
    assert backoff.attempt == 10
    assert total > 10  # ten drops take more than ten seconds, not 2.5 as with a reset each


def test_a_connection_that_lasted_starts_the_backoff_over() -> None:
    clock = Clock()
    backoff = Backoff(0.5, 30, random.Random(3), stable_after=30, clock=clock)
    ceilings(backoff, 6)
    backoff.reset()
    clock.now += 31  # up for longer than stable_after
    assert backoff.next() <= 0.5
    assert backoff.attempt == 1
