"""Publications that are not device states, waiting for the publisher's next flush.

Two queues: `retained` work (device clears, discovery configs of the bridge, stale-topic
clears, full flespi messages) that is never dropped — full messages are bounded by
`flespi.max_inflight`, since each holds back its flespi acknowledgement — and command
`results`, which are bounded: past `MAX_RESULTS` while the local broker is away the oldest
result is dropped and counted (`flespi_bridge_dropped_total{reason="outbox_full"}`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from bridge.core.transport import Publication
from bridge.logs import RateLimitedLog

log = logging.getLogger(__name__)
MAX_RESULTS = 20_000


class Outbox:
    def __init__(self, wake: Callable[[], None], dropped: Callable[[str], None],
                 max_results: int = MAX_RESULTS) -> None:
        self._wake = wake
        self._dropped = dropped
        self._work: deque[Publication] = deque()
        self._results: deque[Publication] = deque()
        self.max_results = max_results
        self._bad = RateLimitedLog(log)

    def __len__(self) -> int:
        return len(self._work) + len(self._results)

    def add(self, publications: Iterable[Publication]) -> None:
        self._work.extend(publications)
        self._wake()

    def add_one(self, publication: Publication) -> None:
        self._work.append(publication)
        self._wake()

    def add_result(self, publication: Publication) -> None:
        if len(self._results) >= self.max_results:
            dropped = self._results.popleft()
            self._dropped("outbox_full")
            self._bad.warning("outbox", "local broker away too long: dropped the result on %s",
                              dropped.topic)
        self._results.append(publication)
        self._wake()

    def take(self, limit: int) -> tuple[list[Publication], list[Publication]]:
        """Up to `limit` publications, (work, results), each in order, work first."""
        work = [self._work.popleft() for _ in range(min(limit, len(self._work)))]
        limit -= len(work)
        results = [self._results.popleft() for _ in range(min(limit, len(self._results)))]
        return work, results

    def requeue(self, work: list[Publication], results: list[Publication]) -> None:
        """What a failed batch carried goes back to the front, in its order."""
        self._work.extendleft(reversed(work))
        self._results.extendleft(reversed(results))
        self._wake()


class Outlet(Protocol):
    """The publisher as the parts that add work see it: its outbox, and `wake` when they
    marked a device in the store for rendering."""

    @property
    def outbox(self) -> Outbox: ...

    def wake(self) -> None: ...
