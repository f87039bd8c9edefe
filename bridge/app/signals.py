"""Ctrl-C and SIGTERM as an event: every command stops in order, never by a KeyboardInterrupt
raised wherever the program happens to be (which ends in a traceback, with parts half stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set `stop` (call it before starting anything)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows' event loops
            loop.add_signal_handler(sig, stop.set)
