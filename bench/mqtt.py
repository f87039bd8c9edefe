"""`RawClient`, the benchmark checkers' MQTT 3.1.1 client: subscribe (QoS 1), publish, and a
callback per received message, written for speed and predictability so that the observer is
never the slowest part of a measurement. The packets are the bridge's own codec
(`bridge.mqtt.codec`), as are the load generator's (`bench/loadgen.py`, `bench/workload.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence
from typing import cast

from bridge.mqtt.codec import (
    CONNACK,
    DISCONNECT_PACKET,
    PUBLISH,
    SUBACK,
    MalformedPacketError,
    PacketReader,
    connack_code,
    connect311,
    packet_id,
    puback,
    publish311,
    publish_fields,
    subscribe311,
)

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
        self._transport.write(connect311(self.client_id, keepalive=600))

    def data_received(self, data: bytes) -> None:
        acks = bytearray()
        callback = self.on_message
        frames = self._reader.split(data)  # PUBACKs (of `publish` at QoS 1) are ignored
        for first, body in frames.packets:
            kind = first & 0xF0
            if kind == PUBLISH:
                topic, pid, payload = publish_fields(first, body)
                if pid:
                    acks += puback(pid)
                self.received += 1
                if callback is not None:
                    callback(topic, payload, bool(first & 1))
            elif kind == CONNACK:
                if self._connack is not None and not self._connack.done():
                    if (code := connack_code(body)) == 0:
                        self._connack.set_result(None)
                    else:
                        self._connack.set_exception(ConnectionError(f"CONNACK {code}"))
            elif kind == SUBACK:
                fut = self._subacks.pop(packet_id(body), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        if acks and self._transport is not None:
            self._transport.write(bytes(acks))
        if frames.malformed:
            raise MalformedPacketError("the broker's byte stream is not MQTT")

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
        self._transport.write(publish311(topic, payload, pid, qos, retain))

    async def close(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.write(DISCONNECT_PACKET)
            self._transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), 5)
