"""GmqttUpstream against a scripted MQTT 5 broker on loopback: timeouts, flow control,
deferred PUBACKs, and the token kept out of reprs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest
from support.helpers import TOKEN, wait_until

from bridge.core.ledger import Ack
from bridge.exceptions import UpstreamError
from bridge.flespi.upstream import ConnectOptions, GmqttUpstream
from bridge.mqtt import codec as wire

CONNACK = b"\x20\x03\x00\x00\x00"  # MQTT 5: no session, success, no properties
PINGRESP = wire.PINGRESP_PACKET


class FakeBroker:
    """Answers CONNECT (unless `connack` is False), SUBSCRIBE (unless `suback` is False) and
    PINGREQ; records PUBACK packet ids; `send` writes to the connected client."""

    def __init__(self, *, connack: bool = True, suback: bool = True) -> None:
        self.connack, self.suback = connack, suback
        self.pubacks: list[int] = []
        self.pings = 0
        self.connected = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None
        self.changed = asyncio.Event()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        packets = wire.PacketReader()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                frames = packets.split(data)
                self.pubacks += frames.acks
                for first, body in frames.packets:
                    kind = first & 0xF0
                    if kind == wire.CONNECT and self.connack:
                        writer.write(CONNACK)
                        self.connected.set()
                    elif kind == wire.SUBSCRIBE and self.suback:
                        writer.write(wire.packet(wire.SUBACK, body[:2] + b"\x00\x01"))
                    elif kind == wire.PINGREQ:
                        self.pings += 1
                        writer.write(PINGRESP)
                    elif kind == wire.PUBACK:  # with a reason code
                        self.pubacks.append(wire.packet_id(body))
                self.changed.set()

    def send(self, first_id: int, count: int) -> None:
        assert self.writer is not None
        self.writer.write(b"".join(
            wire.publish5(f"flespi/state/gw/devices/1/telemetry/p{i}", b"1", mid=i,
                          properties=wire.user_properties([("timestamp", "1700000000.5")]))
            for i in range(first_id, first_id + count)))


class BrokerFactory(Protocol):
    """The `broker_factory` fixture: starts a FakeBroker on a free loopback port."""

    async def __call__(self, *, connack: bool = ..., suback: bool = ...) -> FakeBroker: ...


@pytest.fixture
async def broker_factory() -> AsyncIterator[BrokerFactory]:
    started: list[FakeBroker] = []

    async def start(**kwargs: Any) -> FakeBroker:
        broker = FakeBroker(**kwargs)
        broker.server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        assert broker.server is not None
        broker.server.close()
        if broker.writer is not None:
            broker.writer.close()


def options(port: int, **kwargs: Any) -> ConnectOptions:
    return ConnectOptions(host="127.0.0.1", port=port, username=TOKEN, client_id="unit",
                          **kwargs)


class Received:
    def __init__(self) -> None:
        self.acks: list[Ack] = []

    def __call__(self, topic: str, payload: bytes, props: Any, ack: Ack | None) -> None:
        assert ack is not None
        self.acks.append(ack)


def test_connect_options_repr_hides_the_token() -> None:
    opts = options(8883)
    assert TOKEN not in repr(opts)
    assert TOKEN not in str(opts)
    assert "127.0.0.1" in repr(opts)
    assert opts.username == TOKEN


async def test_connect_times_out_without_connack(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory(connack=False)
    up = GmqttUpstream(options(broker.port, timeout=0.3), Received())
    expected = rf"127\.0\.0\.1:{broker.port}: no CONNACK within 0\.3s"
    with pytest.raises(UpstreamError, match=expected):
        await up.connect()
    assert not up.connected
    await asyncio.wait_for(up.wait_closed(), 1)


async def test_subscribe_times_out_without_suback(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory(suback=False)
    up = GmqttUpstream(options(broker.port, timeout=0.3), Received())
    await up.connect()
    try:
        with pytest.raises(UpstreamError, match=rf"no SUBACK from 127\.0\.0\.1:{broker.port}"):
            await up.subscribe(["flespi/state/gw/devices/+"])
    finally:
        await up.disconnect()


async def test_subscriptions_in_flight_together_each_get_their_suback(
        broker_factory: BrokerFactory) -> None:
    """A split fleet subscribes its devices several SUBSCRIBEs at a time: each waits for
    its own SUBACK (by packet id), none for another's."""
    broker = await broker_factory()
    up = GmqttUpstream(options(broker.port, timeout=2), Received())
    await up.connect()
    try:
        await asyncio.wait_for(asyncio.gather(
            *(up.subscribe([f"flespi/state/gw/devices/{d}/+"]) for d in range(1, 6))), 5)
    finally:
        await up.disconnect()


async def test_keepalive_is_answered_while_the_window_is_full(
        broker_factory: BrokerFactory) -> None:
    """Nothing acknowledged (the local broker is down): the socket is still read, so the
    PINGRESPs arrive and gmqtt never gives up on the connection (2x keepalive = 2 s)."""
    broker = await broker_factory()
    received = Received()
    up = GmqttUpstream(options(broker.port, keepalive=1, receive_maximum=5), received)
    await up.connect()
    try:
        broker.send(1, 6)  # the window, plus Mosquitto's one extra
        await wait_until(lambda: len(received.acks) == 6, what="the window delivered")
        await wait_until(lambda: broker.pings >= 4, timeout=10, what="4 pings (past 2x keepalive)")
        assert up.connected
        assert broker.pubacks == []  # nothing acknowledged until `ack`
        assert up.unacked == 6
    finally:
        await up.disconnect()


async def test_reading_pauses_only_at_the_guard(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory()
    received = Received()
    up = GmqttUpstream(options(broker.port, receive_maximum=10), received, unacked_guard=50)
    await up.connect()
    try:
        broker.send(1, 40)  # 4x the receive maximum: read anyway
        await wait_until(lambda: len(received.acks) == 40, what="40 messages")
        assert up.pauses == 0
        broker.send(41, 20)  # past the guard: reading pauses
        await wait_until(lambda: up.pauses >= 1, what="reading paused")
        assert 50 <= len(received.acks) <= 60
        up.ack(received.acks[:30])  # acks resume reading, in receive order
        await wait_until(lambda: len(broker.pubacks) == 30, what="30 PUBACKs")
        assert broker.pubacks == list(range(1, 31))
        broker.send(61, 5)
        await wait_until(lambda: len(received.acks) == 65, what="reading resumed")
        up.ack(received.acks[30:])
        await wait_until(lambda: len(broker.pubacks) == 65, what="all PUBACKs")
        assert broker.pubacks == list(range(1, 66))
        assert up.unacked == 0
    finally:
        await up.disconnect()


async def test_acks_of_an_earlier_connection_are_void(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory()
    received = Received()
    up = GmqttUpstream(options(broker.port), received)
    await up.connect()
    try:
        broker.send(1, 2)
        await wait_until(lambda: len(received.acks) == 2, what="2 messages")
        stale = (up.generation - 1, 1)
        up.ack([stale, *received.acks])
        await wait_until(lambda: len(broker.pubacks) == 2, what="2 PUBACKs")
        assert broker.pubacks == [1, 2]
    finally:
        await up.disconnect()
