"""The local client's outgoing QoS 1 publications: packet ids, the broker's limits, and what
each PUBACK completes.

Invariants:
- at most `quota` publications await a PUBACK (the broker's Receive Maximum, MQTT 5; what
  is over it waits here, in order, and goes out as PUBACKs come back), and never more than
  `MAX_IN_FLIGHT`, so that packet ids always remain for SUBSCRIBE and allocation ends;
- a publication larger than the broker's Maximum Packet Size is never written (the broker
  would drop the connection, and with it everything else in flight): its waiter is told
  `refused(publication, PACKET_TOO_LARGE)` at once;
- a PUBACK whose reason code is a refusal (MQTT 5, >= 0x80) completes its publication like
  any PUBACK (`set()`), after `refused(publication, code)`: the broker has answered, and
  nothing about the connection is wrong.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from bridge.exceptions import LocalUnavailableError
from bridge.mqtt.codec import publish311_many, varint

# Publications awaiting a PUBACK at most, whatever the broker allows: 535 packet ids stay
# for subscriptions.
MAX_IN_FLIGHT = 65_000
PACKET_TOO_LARGE = 0x95
Pub = tuple[str, bytes, bool]  # topic, payload, retain


class Waiter(Protocol):
    """Told `set()` once per publication the broker answered (a batch shares one), and
    `refused(publication, reason code)` before that for each one the broker refused, or at
    once, without a `set()`, for one never sent because it is too large."""

    def set(self) -> None: ...

    def refused(self, publication: Pub, code: int) -> None: ...


def packet_size(topic: str, payload: bytes, v5: bool) -> int:
    """The size on the wire of a QoS 1 PUBLISH of `payload` on `topic`."""
    length = 2 + len(topic.encode()) + 2 + (1 if v5 else 0) + len(payload)
    return 1 + len(varint(length)) + length


class InFlight:
    """The packet ids in use and the publications waiting for the broker's window.
    `take` and `acked` return the bytes to write."""

    __slots__ = ("_queue", "acks", "max_packet", "mid", "quota", "subacks", "v5")

    def __init__(self) -> None:
        # packet id -> (what its PUBACK completes, the publication)
        self.acks: dict[int, tuple[Waiter, Pub]] = {}
        # packet id -> what its SUBACK completes
        self.subacks: dict[int, asyncio.Future[bytes]] = {}
        self.mid = 0
        self.quota = MAX_IN_FLIGHT
        self.max_packet: int | None = None
        self.v5 = False
        self._queue: deque[tuple[Pub, Waiter]] = deque()

    def limits(self, *, v5: bool, receive_maximum: int | None, max_packet: int | None) -> None:
        """What the CONNACK said (None: no limit given)."""
        self.v5 = v5
        self.quota = min(receive_maximum or MAX_IN_FLIGHT, MAX_IN_FLIGHT)
        self.max_packet = max_packet

    @property
    def waiting(self) -> int:
        """Publications held back by the broker's Receive Maximum."""
        return len(self._queue)

    def next_mid(self) -> int:
        """A free packet id (for a SUBSCRIBE); LocalUnavailableError when none is."""
        mid, acks, subacks = self.mid, self.acks, self.subacks
        for _ in range(65535):
            mid = mid % 65535 + 1
            if mid not in acks and mid not in subacks:
                self.mid = mid
                return mid
        raise LocalUnavailableError("every packet id is in flight")

    def take(self, publications: Sequence[Pub], qos: int, waiter: Waiter
             ) -> tuple[bytes, int]:
        """(what to write now, how many PUBACKs `waiter` is to expect); at QoS 1 what the
        window cannot take yet is queued."""
        if self.max_packet is not None:
            publications = self._fitting(publications, waiter)
        if not qos:
            return publish311_many(publications, 0, (), self.v5), 0
        if self._queue or self._room() < len(publications):
            self._queue.extend((pub, waiter) for pub in publications)
            return self._release(), len(publications)
        return self._encode(publications, waiter), len(publications)

    def acked(self, mid: int) -> Waiter | None:
        """The waiter of `mid`'s publication, now answered (None: not ours)."""
        entry = self.acks.pop(mid, None)
        return None if entry is None else entry[0]

    def refused(self, mid: int, code: int) -> Waiter | None:
        entry = self.acks.pop(mid, None)
        if entry is None:
            return None
        entry[0].refused(entry[1], code)
        return entry[0]

    def release(self) -> bytes:
        """What the window lets out now that PUBACKs came back (b"" if nothing waits)."""
        return self._release() if self._queue else b""

    def clear(self) -> None:
        self.acks.clear()
        self.subacks.clear()
        self._queue.clear()

    def _release(self) -> bytes:
        queue, parts = self._queue, []
        room = self._room()
        while queue and room > 0:  # consecutive publications of one waiter: one batch
            waiter, pubs = queue[0][1], []
            while queue and room > 0 and queue[0][1] is waiter:
                pubs.append(queue.popleft()[0])
                room -= 1
            parts.append(self._encode(pubs, waiter))
        return b"".join(parts)

    def _room(self) -> int:
        """Publications the window takes now: within the quota, and never more than the
        packet ids free (so `_encode` always finds one)."""
        acks = len(self.acks)
        return min(self.quota - acks, 65535 - acks - len(self.subacks))

    def _encode(self, publications: Sequence[Pub], waiter: Waiter) -> bytes:
        """The hot path: ids taken here, the packets encoded by the codec."""
        mids: list[int] = []
        add = mids.append
        acks, subacks = self.acks, self.subacks
        mid = self.mid
        for pub in publications:  # `_room` keeps ids free: this ends
            mid = mid % 65535 + 1
            while mid in acks or mid in subacks:
                mid = mid % 65535 + 1
            acks[mid] = (waiter, pub)
            add(mid)
        self.mid = mid
        return publish311_many(publications, 1, mids, self.v5)

    def _fitting(self, publications: Sequence[Pub], waiter: Waiter) -> Sequence[Pub]:
        """`publications` without those over the broker's Maximum Packet Size (refused)."""
        limit = self.max_packet
        assert limit is not None
        # a cheap bound first: a topic's UTF-8 is at most four bytes a character
        if all(len(p) + 4 * len(t) + 12 <= limit for t, p, _ in publications):
            return publications
        kept = []
        for pub in publications:
            if packet_size(pub[0], pub[1], self.v5) > limit:
                waiter.refused(pub, PACKET_TOO_LARGE)
            else:
                kept.append(pub)
        return kept
