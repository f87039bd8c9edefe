"""Ctrl-C and SIGTERM as an event: every command stops in order, never by a KeyboardInterrupt
raised wherever the program happens to be (which ends in a traceback, with parts half stopped).

The handlers are the process's own (`signal.signal`), not the event loop's
(`loop.add_signal_handler`): the loop puts the default handlers back when it closes, and
Python's own finalization does the same to a Python handler; a second Ctrl-C or a `docker
stop` landing in the last milliseconds of the exit then killed a process that had stopped
cleanly (status -15, or a KeyboardInterrupt traceback). Ours stay until `run` ends the loop,
and then the signals are ignored: a second signal, during the graceful stop (bounded by
`shutdown.grace`) or after it, changes nothing. For a command's process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set `stop` (call it in the command's loop, before starting
    anything)."""
    loop = asyncio.get_running_loop()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the stop is done
            loop.call_soon_threadsafe(stop.set)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` for a command that calls `stop_on_signals`; once it returns, SIGINT
    and SIGTERM are ignored for what is left of the process's life."""
    try:
        return asyncio.run(main)
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
