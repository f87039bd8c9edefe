"""The bridge's essential tasks: started together, watched, and cancelled together.

If one ends while the bridge is not stopping, `failed` is set: `/healthz` then answers 503
and `flespi-bridge run` exits non-zero, so a supervisor (Docker, Kubernetes, systemd)
restarts the process instead of leaving a half-working bridge behind a green health check.

The `Supervisor` is a part around the parts that need its tasks (`bridge.core.lifecycle`):
it starts them, then its essential tasks (every listener is bound before anything
connects); on stop, it opens the grace window, stops them in reverse (the graceful part:
commands drained, the publisher flushed, `offline` said), and only then cancels its tasks
and what work is left (commands still running past the grace window).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import Any

from bridge.core.lifecycle import Parts, Shutdown

log = logging.getLogger(__name__)

Loop = Callable[[], Coroutine[Any, Any, Any]]


class Supervisor:
    def __init__(self, parts: Parts, loops: Mapping[str, Loop], shutdown: Shutdown,
                 leftovers: Collection[asyncio.Task[Any]] = ()) -> None:
        """`loops`: name -> an essential task's coroutine function; `leftovers`: a live
        collection of tasks cancelled with them at the end of a stop."""
        self.parts = parts
        self.loops = dict(loops)
        self.shutdown = shutdown
        self.failed = shutdown.failed  # an essential task ended: the process must restart
        self.leftovers = leftovers
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False

    async def start(self) -> None:
        await self.parts.start()
        for name, loop in self.loops.items():
            task = asyncio.create_task(loop(), name=name)
            task.add_done_callback(self._ended)
            self._tasks.append(task)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        log.error("essential task %r ended (%s): the bridge cannot go on", task.get_name(),
                  f"{type(exc).__name__}: {exc}" if exc else "no error",
                  exc_info=exc)
        self.failed.set()

    async def stop(self) -> None:
        self._stopping = True  # from now on a task's end is expected
        self.shutdown.begin()
        await self.parts.stop()
        await cancel_and_wait([*self._tasks, *self.leftovers])


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], timeout: float = 10.0) -> None:
    """Cancel tasks and wait for them, cancelling again when a cancellation was swallowed
    (Python 3.11's `asyncio.wait_for` can lose one)."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    if pending:
        log.warning("tasks still running at shutdown: %s", [t.get_name() for t in pending])
