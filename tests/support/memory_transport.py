"""An in-memory `LocalTransport`: a broker that acknowledges batches only when the test says
so, loses every unacknowledged batch on `disconnect`, and keeps what it acknowledged."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from bridge.core.transport import Publication
from bridge.exceptions import LocalUnavailableError


class MemoryTransport:
    def __init__(self) -> None:
        self._connected = asyncio.Event()
        self.pending: deque[tuple[list[Publication], asyncio.Future[None]]] = deque()
        self.retained: dict[str, bytes] = {}  # what a subscriber arriving now would get
        self.delivered: list[Publication] = []  # acknowledged, in order
        self.batch_sizes: list[int] = []
        self.peak_unacked = 0
        self.fail_next: BaseException | None = None  # raised by the next publish_nowait

    @property
    def connected(self) -> asyncio.Event:
        return self._connected

    @property
    def unacked(self) -> int:
        return sum(len(pubs) for pubs, _ in self.pending)

    def publish_nowait(self, publications: Sequence[Publication]) -> asyncio.Future[None]:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if not self._connected.is_set():
            raise LocalUnavailableError("not connected")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pubs = list(publications)
        self.batch_sizes.append(len(pubs))
        if pubs:
            self.pending.append((pubs, future))
            self.peak_unacked = max(self.peak_unacked, self.unacked)
        else:
            future.set_result(None)  # nothing to wait for, as with a real broker
        return future

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        if not self._connected.is_set():
            raise LocalUnavailableError("not connected")
        self._deliver([Publication(topic, payload, retain)])

    def _deliver(self, pubs: list[Publication]) -> None:
        for pub in pubs:
            self.delivered.append(pub)
            if pub.retain:
                if pub.payload:
                    self.retained[pub.topic] = pub.payload
                else:
                    self.retained.pop(pub.topic, None)

    def ack_one(self) -> bool:
        """The broker acknowledges the oldest batch in flight."""
        if not self.pending:
            return False
        pubs, future = self.pending.popleft()
        self._deliver(pubs)
        if not future.done():
            future.set_result(None)
        return True

    def connect(self) -> None:
        self._connected.set()

    def disconnect(self) -> None:
        """The connection drops: nothing unacknowledged counts as delivered."""
        self._connected.clear()
        while self.pending:
            _, future = self.pending.popleft()
            if not future.done():
                future.set_exception(LocalUnavailableError("connection lost"))
                future.exception()
