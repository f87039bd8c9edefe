"""The bridge's essential tasks: started together, watched, and cancelled together.

If one ends while the bridge is not stopping, `failed` is set: `/healthz` then answers 503
and `flespi-bridge run` exits non-zero, so a supervisor (Docker, Kubernetes, systemd)
restarts the process instead of leaving a half-working bridge behind a green health check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self.failed = asyncio.Event()  # an essential task ended: the process must restart
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False

    def start(self, **coroutines: Coroutine[Any, Any, Any]) -> None:
        for name, coro in coroutines.items():
            task = asyncio.create_task(coro, name=name)
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

    def stopping(self) -> None:
        """From now on a task's end is expected."""
        self._stopping = True

    async def stop(self, *others: asyncio.Task[Any]) -> None:
        self._stopping = True
        await cancel_and_wait([*self._tasks, *others])


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
