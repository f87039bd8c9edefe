"""A small asyncio MQTT client (MQTT 5, or 3.1.1 on request): the bridge's connection to the
local broker.

Written for the one thing the local side does in bulk, publishing retained messages at QoS 1
(a start-up publishes four or more per device): a batch is encoded into one buffer and
written at once, and PUBACKs are parsed straight from the socket's data, a few microseconds
each. The packets themselves are `codec.py`'s (`v5.py` reads MQTT 5's reason codes and
properties); outgoing publications and the broker's limits are `flight.py`'s, incoming
messages and their back-pressure `inbox.py`'s; this module holds the connection's I/O and
state (waiters, keepalive). paho (under aiomqtt) spent ~47 us of CPU per publication here.

What it does, and no more: CONNECT (clean start, username/password, a retained will,
keepalive), PUBLISH QoS 0/1 out within the broker's Receive Maximum and Maximum Packet Size,
SUBSCRIBE, PUBLISH QoS 0/1/2 in (acknowledged when taken), PINGREQ, DISCONNECT.

Failures: a refusal is told apart from a loss. A publication the broker refuses (an MQTT 5
PUBACK reason code, or too large for its Maximum Packet Size) is that publication's
failure (`Waiter.refused`, `PublishRefusedError`); the connection goes on. Everything else
is a `LocalUnavailableError` that says why (a refused CONNACK, a TLS alert, a timeout, the
broker's DISCONNECT reason, the connection lost); `ProtocolRefusedError` when the broker
does not speak MQTT 5, `SessionTakenOverError` when another client took the client id; every
waiter fails with it when the connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bridge.exceptions import LocalUnavailableError
from bridge.mqtt.codec import (
    CONNACK,
    DISCONNECT,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PUBACK,
    PUBLISH,
    PUBREL,
    RECEIVE_MAXIMUM,
    REFUSED,
    SUBACK,
    PacketReader,
    connack_code,
    connect5,
    connect311,
    packet_id,
    subscribe5,
    subscribe311,
)
from bridge.mqtt.flight import InFlight, Pub, Waiter
from bridge.mqtt.inbox import Inbox, Message
from bridge.mqtt.options import (
    DEFAULT_OPTIONS,
    Options,
    ProtocolRefusedError,
    PublishRefusedError,
    SessionTakenOverError,
)
from bridge.mqtt.tcp import QuickAck
from bridge.mqtt.v5 import (
    MAXIMUM_PACKET_SIZE,
    SESSION_TAKEN_OVER,
    UNSUPPORTED_PROTOCOL,
    connack_properties,
    disconnect_reason,
    reason,
    reason_code,
    suback_codes,
)

log = logging.getLogger("bridge.publish.local_broker.mqtt")

# Received messages held for the reader at most; past it the connection stops reading.
MAX_QUEUED_MESSAGES = 10_000
# QoS 1 messages the broker may send before waiting for our PUBACKs (MQTT 5), which are
# sent as the reader takes them.
RECEIVE_MAXIMUM_IN = 1_000
T = TypeVar("T")


class _Single:
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future

    def set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def refused(self, publication: Pub, code: int) -> None:
        if not self.future.done():
            self.future.set_exception(PublishRefusedError(
                f"the broker refused the publication on {publication[0]}: {reason(code)}",
                code))


class _Protocol(asyncio.Protocol):
    def __init__(self, client: MqttClient) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client._tcp.again()
        self.client._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)


class MqttClient:
    """One connection: `connect`, use, `disconnect` (or lose it); make a new one to
    reconnect."""

    def __init__(self, host: str, port: int, *, client_id: str,
                 options: Options = DEFAULT_OPTIONS) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self.options = options
        self.keepalive, self.tls, self.timeout = options.keepalive, options.tls, options.timeout
        self._transport: asyncio.Transport | None = None
        self._tcp_up = False  # the TCP (and TLS) connection was made
        self._tcp = QuickAck(None)
        self.v5 = options.protocol == 5
        self._reader = PacketReader()
        self._flight = InFlight()
        self._subacks = self._flight.subacks
        self._inbox = Inbox(self._write_quietly, self._pause_reading, MAX_QUEUED_MESSAGES)
        self._received = time.monotonic()
        self._connack: asyncio.Future[bytes] | None = None
        # the broker's DISCONNECT (MQTT 5): why it closed the connection
        self._disconnected: LocalUnavailableError | None = None
        self._pinger: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        # fails with the reason once the connection is lost (or closed by `disconnect`)
        self.closed: asyncio.Future[None] = loop.create_future()
        self._lost_handlers: list[Callable[[], None]] = []

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    # -- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls else None)
                self._transport = transport
                self._tcp_up = True
                self._tcp = QuickAck(transport.get_extra_info("socket"))
                o, will = self.options, self.options.will
                fields = None if will is None else (will.topic, will.payload, will.qos,
                                                    will.retain)
                transport.write(connect5(
                    self.client_id, keepalive=o.keepalive, username=o.username,
                    password=o.password, will=fields, receive_maximum=RECEIVE_MAXIMUM_IN)
                    if self.v5 else connect311(self.client_id, keepalive=o.keepalive,
                                               username=o.username, password=o.password,
                                               will=fields))
                body = await self._connack
        except (TimeoutError, LocalUnavailableError) as exc:
            self.abort()
            why = str(exc) if isinstance(exc, LocalUnavailableError) else \
                f"no CONNACK from {self.where} within {self.timeout:g}s"
            if self.v5 and self._tcp_up:  # some MQTT 3.1.1 brokers close, or never answer
                raise ProtocolRefusedError(f"{why} (to an MQTT 5 CONNECT)") from None
            raise LocalUnavailableError(why) from None
        except OSError as exc:  # ssl.SSLError included
            self.abort()
            raise LocalUnavailableError(str(exc) or type(exc).__name__) from None
        code = connack_code(body)
        if code:
            self.abort()
            if self.v5 and code in (1, UNSUPPORTED_PROTOCOL):  # 1: a 3.1.1 broker's answer
                raise ProtocolRefusedError(f"{self.where} does not accept MQTT 5")
            words = reason(code) if self.v5 else REFUSED.get(code, f"return code {code}")
            raise LocalUnavailableError(f"connection refused: {words}")
        if self.v5:
            props = connack_properties(body)
            receive, size = props.get(RECEIVE_MAXIMUM), props.get(MAXIMUM_PACKET_SIZE)
            self._flight.limits(v5=True, receive_maximum=receive if isinstance(receive, int)
                                else None, max_packet=size if isinstance(size, int) else None)
        self._pinger = asyncio.create_task(self._ping(), name="local-keepalive")

    async def _ping(self) -> None:
        """PINGREQ at half the keepalive; a broker silent for 1.5 keepalives is gone."""
        interval = max(self.keepalive / 2, 0.5)
        while self._transport is not None:
            await asyncio.sleep(interval)
            if self._inbox.paused:  # not reading, by our choice: the broker is not silent
                self._received = time.monotonic()
            elif time.monotonic() - self._received > 1.5 * self.keepalive:
                log.warning("local broker %s silent for %.0fs: closing the connection",
                            self.where, time.monotonic() - self._received)
                self.abort()
                return
            self._write(PINGREQ_PACKET)

    def on_lost(self, handler: Callable[[], None]) -> None:
        """Call `handler` once when the connection is lost or closed."""
        if self.closed.done():
            handler()
        else:
            self._lost_handlers.append(handler)

    def remove_on_lost(self, handler: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._lost_handlers.remove(handler)

    def _lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._tcp.close()
        if self._pinger is not None:
            self._pinger.cancel()
        why = self._disconnected or LocalUnavailableError(
            f"connection to {self.where} lost" + (f": {exc}" if exc else ""))
        failed: list[asyncio.Future[Any]] = [self.closed, *self._subacks.values()]
        if self._connack is not None:
            failed.append(self._connack)
        for future in failed:
            if not future.done():
                future.set_exception(why if exc is None or future is not self._connack else
                                     LocalUnavailableError(str(exc) or type(exc).__name__))
                future.exception()  # retrieved: a waiter still gets it; none need wait
        self._flight.clear()
        handlers, self._lost_handlers = self._lost_handlers, []
        for handler in handlers:
            handler()

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self.closed.done()

    async def disconnect(self) -> None:
        """DISCONNECT (the broker then drops the will) and close."""
        transport = self._transport
        if transport is not None:
            transport.write(DISCONNECT_PACKET)
            self._tcp.close()
            transport.close()
            with contextlib.suppress(LocalUnavailableError, TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.shield(self.closed)

    def abort(self) -> None:
        """Drop the connection at once (no DISCONNECT: the broker publishes the will)."""
        self._tcp.close()  # else the socket would stay open until the transport says lost
        transport = self._transport
        if transport is not None:
            transport.abort()
        elif not self.closed.done():
            self._lost(None)

    # -- sending -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is None or self.closed.done():
            raise LocalUnavailableError(f"not connected to {self.where}")
        self._transport.write(data)

    def _write_quietly(self, data: bytes) -> None:
        """An acknowledgement: lost with the connection, as the broker's copy is."""
        with contextlib.suppress(LocalUnavailableError):
            self._write(data)

    def _pause_reading(self, pause: bool) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if pause:
                log.warning("local broker %s: %d messages not yet handled: not reading "
                            "until half of them are", self.where, self._inbox.limit)
                transport.pause_reading()
            else:
                transport.resume_reading()

    @property
    def waiting(self) -> int:
        """Publications held back by the broker's Receive Maximum."""
        return self._flight.waiting

    @property
    def max_packet_size(self) -> int | None:
        """The broker's Maximum Packet Size (MQTT 5 CONNACK), None when it gave none."""
        return self._flight.max_packet

    def publish_many(self, publications: Sequence[Pub], qos: int, waiter: Waiter) -> int:
        """Write publications in one go (what the broker's Receive Maximum holds back goes
        out as PUBACKs return); at QoS 1 `waiter.set()` is called once per PUBACK. Returns
        how many `set()` calls to expect: one refused at once for its size is not counted.
        """
        if not self.connected:
            raise LocalUnavailableError(f"not connected to {self.where}")
        data, expected = self._flight.take(publications, qos, waiter)
        if data:
            self._write(data)
        return expected

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float | None = None) -> None:
        """Publish one message; at QoS 1 wait for its PUBACK."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Single(future)
        if not self.publish_many([(topic, payload, retain)], qos, waiter):
            if future.done():
                future.result()  # refused for its size
            return
        await self._until(future, timeout, f"no PUBACK for {topic}")

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        mid = self._flight.next_mid()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._subacks[mid] = future
        self._write((subscribe5 if self.v5 else subscribe311)(mid, [topic], qos))
        body = await self._until(future, self.timeout, f"no SUBACK for {topic}")
        codes = suback_codes(body, self.v5)
        if not codes or any(code >= 0x80 for code in codes):
            raise LocalUnavailableError(f"subscription to {topic} refused"
                                        + (f": {reason(codes[0])}" if codes else ""))

    async def _until(self, future: asyncio.Future[T], timeout: float | None,
                        what: str) -> T:
        """`future`'s result, or LocalUnavailableError when the connection is lost first
        or `timeout` passes."""
        try:
            async with asyncio.timeout(timeout):
                either: set[asyncio.Future[Any]] = {future, self.closed}
                done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise LocalUnavailableError(f"{what} within {timeout:g}s") from None
        if future in done or future.done():
            return future.result()
        future.cancel()
        self.closed.result()  # raises the reason
        raise LocalUnavailableError(f"connection to {self.where} closed")

    # -- receiving -----------------------------------------------------------------------

    async def message(self) -> Message:
        """The next message received: (topic, payload, retain); acknowledged to the broker
        now that it is taken."""
        while True:
            message = self._inbox.take()
            if message is not None:
                return message
            await self._until(asyncio.shield(self._inbox.ready()), None, "no message")

    def _feed(self, data: bytes) -> None:
        self._received = time.monotonic()
        acks, packets, malformed = self._reader.split(data)
        flight = self._flight
        if acks:  # most of what comes: one PUBACK per publication
            pop = flight.acks.pop
            for mid in acks:
                entry = pop(mid, None)
                if entry is not None:
                    entry[0].set()
        for first, body in packets:
            kind = first & 0xF0
            if kind == PUBACK:
                code = reason_code(body, 2)
                waiter = flight.refused(packet_id(body), code) if code >= 0x80 \
                    else flight.acked(packet_id(body))
                if waiter is not None:
                    waiter.set()
            elif kind == PUBLISH:
                self._inbox.received(first, body, self.v5)
            elif kind == PUBREL:
                self._inbox.released(packet_id(body))
            elif kind == CONNACK:
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(body)
            elif kind == SUBACK:
                future = self._subacks.pop(packet_id(body), None)
                if future is not None and not future.done():
                    future.set_result(body)
            elif kind == DISCONNECT:
                self._on_disconnect(body)
        if flight.waiting:
            self._write_quietly(flight.release())
        if malformed:
            self._protocol_error("malformed remaining length")

    def _on_disconnect(self, body: bytes) -> None:
        """The broker says why it closes the connection (MQTT 5)."""
        code, words = disconnect_reason(body)
        error = SessionTakenOverError if code == SESSION_TAKEN_OVER else LocalUnavailableError
        self._disconnected = error(f"{self.where} closed the connection: {words}")

    def _protocol_error(self, what: str) -> None:
        log.warning("local broker %s: %s: closing the connection", self.where, what)
        self.abort()
