"""The lifecycle: parts start in order and stop in reverse, only those started, each once; a
part failing to start stops those before it; a part failing to stop does not keep the others
running."""

from __future__ import annotations

import logging

import pytest

from bridge.core.lifecycle import Parts, Shutdown


class Recorded:
    def __init__(self, name: str, log: list[str], *, fail_start: bool = False,
                 fail_stop: bool = False) -> None:
        self.name, self.log = name, log
        self.fail_start, self.fail_stop = fail_start, fail_stop

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        if self.fail_start:
            raise OSError(f"{self.name} cannot start")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError(f"{self.name} cannot stop")


async def test_start_in_order_stop_in_reverse_once() -> None:
    log: list[str] = []
    parts = Parts([Recorded(n, log) for n in "abc"])
    await parts.start()
    await parts.stop()
    await parts.stop()  # a second stop has nothing left to stop
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


async def test_groups_nest() -> None:
    log: list[str] = []
    parts = Parts([Recorded("a", log), Parts([Recorded("b", log), Recorded("c", log)])])
    await parts.start()
    await parts.stop()
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


async def test_a_failing_start_stops_those_started_and_raises() -> None:
    log: list[str] = []
    parts = Parts([Recorded("a", log), Recorded("b", log, fail_start=True), Recorded("c", log)])
    with pytest.raises(OSError, match="b cannot start"):
        await parts.start()
    assert log == ["start a", "start b", "stop a"]
    await parts.stop()  # nothing is left running: nothing stopped twice
    assert log == ["start a", "start b", "stop a"]


async def test_a_failing_stop_is_logged_and_the_others_still_stop(
        caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    parts = Parts([Recorded("a", log), Recorded("b", log, fail_stop=True), Recorded("c", log)])
    await parts.start()
    with caplog.at_level(logging.ERROR, logger="bridge.core.lifecycle"):
        await parts.stop()
    assert log[3:] == ["stop c", "stop b", "stop a"]
    assert any("Recorded" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_the_grace_window_opens_at_begin_and_failing_closes_it() -> None:
    shutdown = Shutdown(grace=60)
    assert not shutdown.over()  # not stopping: no deadline
    shutdown.begin()
    assert not shutdown.over()  # within the window
    shutdown.failed.set()
    assert shutdown.over()  # failing: no more grace
    closed = Shutdown(grace=0)
    closed.begin()
    assert closed.over()  # no grace at all
