"""What the local broker sends the client: messages held until the reader takes them, with
back-pressure instead of drops.

Invariants:
- a message is acknowledged (PUBACK at QoS 1, PUBREC at QoS 2) when the reader takes it,
  never on receipt: nothing acknowledged is ever dropped. The broker holds the rest
  (MQTT 5: at most the Receive Maximum the client advertised; MQTT 3.1.1: its own
  `max_inflight_messages`);
- past `limit` messages held, the connection stops reading (`pause(True)`), TCP pushes back
  on the broker, and reading resumes once half of them are taken; nothing is dropped;
- a QoS 2 message (a broker that ignores the subscription's maximum QoS 1) is answered
  PUBREC and, on PUBREL, PUBCOMP, and delivered once however often the broker sends it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from bridge.mqtt.codec import PUBCOMP, PUBREC, ack, puback, publish_fields, read_varint

Message = tuple[str, bytes, bool]  # topic, payload, retain


class Inbox:
    __slots__ = ("_pause", "_qos2", "_queue", "_ready", "_write", "limit", "paused")

    def __init__(self, write: Callable[[bytes], None], pause: Callable[[bool], None],
                 limit: int) -> None:
        self.limit = limit
        self.paused = False
        self._write = write
        self._pause = pause
        # (message, the acknowledgement owed when it is taken)
        self._queue: deque[tuple[Message, bytes]] = deque()
        self._ready: asyncio.Future[None] | None = None
        self._qos2: set[int] = set()  # QoS 2 ids received and not yet released (PUBREL)

    def __len__(self) -> int:
        return len(self._queue)

    def received(self, first: int, body: bytes, v5: bool) -> None:
        topic, mid, payload = publish_fields(first, body)
        if v5:
            payload = _without_properties(payload)
        qos = first >> 1 & 0x03
        owed = b""
        if qos == 1:
            owed = puback(mid)
        elif qos >= 2:
            if mid in self._qos2:  # sent again before our PUBREC: delivered once already
                return
            self._qos2.add(mid)
            owed = ack(PUBREC, mid)
        self._queue.append(((topic, payload, bool(first & 0x01)), owed))
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        if len(self._queue) >= self.limit and not self.paused:
            self.paused = True
            self._pause(True)

    def released(self, mid: int) -> None:
        """PUBREL of a QoS 2 message: completed with PUBCOMP."""
        self._qos2.discard(mid)
        self._write(ack(PUBCOMP, mid))

    def take(self) -> Message | None:
        """The next message, now acknowledged; None when there is none."""
        if not self._queue:
            return None
        message, owed = self._queue.popleft()
        if owed:
            self._write(owed)
        if self.paused and len(self._queue) <= self.limit // 2:
            self.paused = False
            self._pause(False)
        return message

    def ready(self) -> asyncio.Future[None]:
        """Completes when a message is there to take."""
        if self._ready is None or self._ready.done():
            self._ready = asyncio.get_running_loop().create_future()
            if self._queue:
                self._ready.set_result(None)
        return self._ready


def _without_properties(rest: bytes) -> bytes:
    """An MQTT 5 PUBLISH's payload: what follows its property block."""
    try:
        length, pos = read_varint(rest, 0)
    except (IndexError, ValueError):
        return b""
    return rest[pos + length:]
