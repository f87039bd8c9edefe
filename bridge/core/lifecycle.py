"""How the parts of a bridge start and stop: each is a `Part` (`start()`, `stop()`), and a
`Parts` starts them in the order given and stops them in the reverse one.

Why one protocol: the wiring holds a list instead of knowing, part by part, which shutdown
is called how; and the order of the list is the whole of the start-up and shutdown story.

Invariants:
- A constructor does nothing that runs: `start()` does (binds a port, subscribes to events).
- Only parts that started are stopped, each once. If a part fails to start, those started
  before it are stopped (in reverse) and the error raised: nothing is left running.
- A part whose `stop()` raises is logged; the parts after it in the stop order still stop.
- `Shutdown` is shared by the parts that finish work during a stop: the grace window opens
  when the stop begins, and `failed` (an essential task ended) cuts it short.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class Part(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Parts:
    """Parts started in order and stopped in reverse; itself a `Part`, so groups nest."""

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = list(parts)
        self._started: list[Part] = []

    async def start(self) -> None:
        for part in self.parts:
            try:
                await part.start()
            except BaseException:
                await self.stop()
                raise
            self._started.append(part)

    async def stop(self) -> None:
        while self._started:
            part = self._started.pop()
            try:
                await part.stop()
            except Exception:
                log.exception("stopping %s failed", type(part).__name__)


class Shutdown:
    """The state of a graceful stop: `grace` seconds from `begin()` for work in progress,
    unless the bridge is failing (`failed`: an essential task ended)."""

    def __init__(self, grace: float = 0.0) -> None:
        self.grace = grace
        self.failed = asyncio.Event()
        self.deadline = math.inf  # loop time; set by `begin()`

    def begin(self) -> None:
        self.deadline = asyncio.get_running_loop().time() + self.grace

    def over(self) -> bool:
        """True once the grace window has closed or the bridge is failing."""
        return asyncio.get_running_loop().time() >= self.deadline or self.failed.is_set()
