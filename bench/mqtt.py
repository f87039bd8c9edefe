"""Just enough MQTT for the benchmark's own tools, written for speed and predictability.

- Packet encoders (MQTT 5 CONNECT/PUBLISH for the load generator, MQTT 3.1.1 for the
  checkers) so the load can be encoded once, before the clock starts.
- `PacketReader`, an incremental parser of a byte stream into packets.
- `RawClient`, a tiny asyncio MQTT 3.1.1 client: subscribe (QoS 1), publish, and a callback
  per received message. The checkers use it instead of a library client so that the
  observer is never the slowest part of a measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from bridge.mqtt.codec import (
    CONNACK,
    CONNECT,
    PUBLISH,
    SUBACK,
    SUBSCRIBE,
    USER_PROPERTY,
    packet,
    read_varint,
    utf8,
    varint,
)

PROP_RECEIVE_MAXIMUM = 0x21


def connect(client_id: str, *, version: int = 5, keepalive: int = 60,
            clean: bool = True) -> bytes:
    flags = 0x02 if clean else 0x00
    vh = utf8("MQTT") + bytes([version, flags]) + keepalive.to_bytes(2, "big")
    if version == 5:
        vh += b"\x00"  # no properties
    return packet(CONNECT, vh + utf8(client_id))


def user_properties(pairs: Sequence[tuple[str, str]]) -> bytes:
    return b"".join(bytes([USER_PROPERTY]) + utf8(k) + utf8(v) for k, v in pairs)


def publish5(topic: str, payload: bytes, *, packet_id: int = 0, qos: int = 1,
             retain: bool = True, properties: bytes = b"") -> bytes:
    """An MQTT 5 PUBLISH; `properties` is the encoded property block (no length)."""
    first = PUBLISH | (qos << 1) | (1 if retain else 0)
    vh = utf8(topic)
    if qos:
        vh += packet_id.to_bytes(2, "big")
    vh += varint(len(properties)) + properties
    return packet(first, vh + payload)


def publish311(topic: str, payload: bytes, *, packet_id: int = 0, qos: int = 0,
               retain: bool = False) -> bytes:
    first = PUBLISH | (qos << 1) | (1 if retain else 0)
    vh = utf8(topic)
    if qos:
        vh += packet_id.to_bytes(2, "big")
    return packet(first, vh + payload)


def subscribe311(packet_id: int, filters: Sequence[str], qos: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(utf8(f) + bytes([qos]) for f in filters)
    return packet(SUBSCRIBE | 0x02, body)


def disconnect() -> bytes:
    return b"\xe0\x00"


def connack_receive_maximum(body: bytes) -> int | None:
    """The Receive Maximum of an MQTT 5 CONNACK body (None: not sent, i.e. 65535)."""
    if len(body) < 3:
        return None
    plen, pos = read_varint(body, 2)
    end = pos + plen
    while pos < end:
        prop = body[pos]
        pos += 1
        if prop == PROP_RECEIVE_MAXIMUM:
            return int.from_bytes(body[pos:pos + 2], "big")
        if prop in (0x24, 0x25, 0x28, 0x29, 0x2A):  # one-byte properties
            pos += 1
        elif prop in (0x21, 0x13, 0x22):  # two-byte integers
            pos += 2
        elif prop in (0x11, 0x27):  # four-byte integers
            pos += 4
        elif prop in (0x12, 0x1A, 0x1C, 0x1F, 0x15, 0x16):  # strings, binary data
            pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
        elif prop == USER_PROPERTY:
            for _ in range(2):
                pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
        else:
            return None
    return None


class PacketReader:
    """Feed bytes, iterate complete packets as (first byte, body)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            first = buf[pos]
            # remaining length, inlined for the common one/two-byte cases
            b1 = buf[pos + 1]
            if b1 < 0x80:
                length, start = b1, pos + 2
            else:
                try:
                    length, start = read_varint(buf, pos + 1)
                except IndexError:
                    break  # the length itself is incomplete
            end = start + length
            if end > n:
                break
            yield first, bytes(buf[start:end])
            pos = end
        del buf[:pos]


def parse_publish(first: int, body: bytes, *, v5: bool = False) -> tuple[str, bytes, int]:
    """(topic, payload, packet id or 0) of a PUBLISH body."""
    tlen = (body[0] << 8) | body[1]
    topic = body[2:2 + tlen].decode()
    pos = 2 + tlen
    pid = 0
    if first & 0x06:
        pid = (body[pos] << 8) | body[pos + 1]
        pos += 2
    if v5:
        plen, pos = read_varint(body, pos)
        pos += plen
    return topic, body[pos:], pid


MessageCallback = Callable[[str, bytes, bool], None]


class RawClient(asyncio.Protocol):
    """A minimal MQTT 3.1.1 client on a plain asyncio transport.

    Received QoS 1 messages are acknowledged in one write per read. `on_message` runs
    synchronously in the event loop for every PUBLISH (topic, payload, retain flag).
    """

    def __init__(self, client_id: str, on_message: MessageCallback | None = None) -> None:
        self.client_id = client_id
        self.on_message = on_message
        self._reader = PacketReader()
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[None] | None = None
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self._ids = itertools.cycle(range(1, 65536))
        self.received = 0
        self.closed = asyncio.Event()

    @classmethod
    async def open(cls, host: str, port: int, client_id: str,
                   on_message: MessageCallback | None = None) -> RawClient:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(client_id, on_message), host, port)
        assert proto._connack is not None
        await asyncio.wait_for(proto._connack, 10)
        return proto

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, hence the cast
        self._transport = cast(asyncio.Transport, transport)
        self._connack = asyncio.get_running_loop().create_future()
        self._transport.write(connect(self.client_id, version=4, keepalive=600))

    def data_received(self, data: bytes) -> None:
        acks = bytearray()
        callback = self.on_message
        for first, body in self._reader.feed(data):
            kind = first & 0xF0
            if kind == PUBLISH:
                topic, payload, pid = parse_publish(first, body)
                if pid:
                    acks += b"\x40\x02" + pid.to_bytes(2, "big")
                self.received += 1
                if callback is not None:
                    callback(topic, payload, bool(first & 1))
            elif kind == CONNACK:
                if self._connack is not None and not self._connack.done():
                    if body[1] == 0:
                        self._connack.set_result(None)
                    else:
                        self._connack.set_exception(ConnectionError(f"CONNACK {body[1]}"))
            elif kind == SUBACK:
                fut = self._subacks.pop((body[0] << 8) | body[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        if acks and self._transport is not None:
            self._transport.write(bytes(acks))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.closed.set()
        for fut in [self._connack, *self._subacks.values()]:
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("connection lost"))

    # -- API -----------------------------------------------------------------------------

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> None:
        assert self._transport is not None
        pid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._subacks[pid] = fut
        self._transport.write(subscribe311(pid, filters, qos))
        await asyncio.wait_for(fut, 10)

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Fire and forget (QoS 1 PUBACKs are read and ignored)."""
        assert self._transport is not None
        pid = next(self._ids) if qos else 0
        self._transport.write(publish311(topic, payload, packet_id=pid, qos=qos, retain=retain))

    async def close(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.write(disconnect())
            self._transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), 5)
