"""A small asyncio MQTT 3.1.1 client: the bridge's connection to the local broker.

Written for the one thing the local side does in bulk, publishing retained messages at QoS 1
(a start-up publishes four or more per device): a batch is encoded into one buffer and
written at once, and PUBACKs are parsed straight from the socket's data, a few microseconds
each. The packets themselves are `codec.py`'s; this module holds the connection's I/O and
state (packet ids, waiters, keepalive). paho (under aiomqtt) spent ~47 us of CPU per
publication here: a message object, a `threading.Condition` and three `recv` calls per
acknowledgement.

What it does, and no more: CONNECT (clean session, username/password, a retained will,
keepalive), PUBLISH QoS 0/1 out, SUBSCRIBE, PUBLISH QoS 0/1 in (acknowledged on receipt),
PINGREQ, DISCONNECT. Every failure is a `LocalUnavailableError` that says why (a refused
CONNACK, a TLS alert, a timeout, the connection lost); every waiter fails with it when the
connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from bridge.exceptions import LocalUnavailableError
from bridge.logs import RateLimitedLog
from bridge.mqtt.codec import (
    CONNACK,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PUBACK,
    PUBLISH,
    REFUSED,
    SUBACK,
    PacketReader,
    connack_code,
    connect311,
    packet_id,
    puback,
    publish311_many,
    publish_fields,
    subscribe311,
)
from bridge.mqtt.tcp import QuickAck

log = logging.getLogger("bridge.publish.local_broker.mqtt")

# Received messages waiting for the reader at most; past it they are dropped (and logged).
MAX_QUEUED_MESSAGES = 10_000
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Options:
    """How to connect, besides where to and as whom: credentials, the will, keepalive (s),
    TLS, and how long to wait for CONNACK and SUBACK (s)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    will: Will | None = None
    keepalive: int = 60
    tls: ssl.SSLContext | None = None
    timeout: float = 10.0


DEFAULT_OPTIONS = Options()


class Waiter(Protocol):
    """Told `set()` once the broker acknowledged a publication (a batch shares one)."""

    def set(self) -> None: ...


class _Single:
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future

    def set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


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
        self.username, self.password = options.username, options.password
        self.will = options.will
        self.keepalive = options.keepalive
        self.tls = options.tls
        self.timeout = options.timeout
        self._transport: asyncio.Transport | None = None
        self._tcp = QuickAck(None)
        self._reader = PacketReader()
        self._acks: dict[int, Waiter] = {}  # message id -> what its PUBACK completes
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._mid = 0
        self._messages: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(
            MAX_QUEUED_MESSAGES)
        self._received = time.monotonic()
        self._connack: asyncio.Future[int] | None = None
        self._pinger: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        # fails with the reason once the connection is lost (or closed by `disconnect`)
        self.closed: asyncio.Future[None] = loop.create_future()
        self._lost_handlers: list[Callable[[], None]] = []
        self._bad = RateLimitedLog(log)
        self.dropped = 0  # received messages dropped on a full queue

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
                self._tcp = QuickAck(transport.get_extra_info("socket"))
                will = self.will
                transport.write(connect311(
                    self.client_id, keepalive=self.keepalive, username=self.username,
                    password=self.password,
                    will=None if will is None else (will.topic, will.payload, will.qos,
                                                    will.retain)))
                code = await self._connack
        except TimeoutError:
            self.abort()
            raise LocalUnavailableError(
                f"no CONNACK from {self.where} within {self.timeout:g}s") from None
        except OSError as exc:  # ssl.SSLError included
            self.abort()
            raise LocalUnavailableError(str(exc) or type(exc).__name__) from None
        if code:
            self.abort()
            raise LocalUnavailableError(
                f"connection refused: {REFUSED.get(code, f'return code {code}')}")
        self._pinger = asyncio.create_task(self._ping(), name="local-keepalive")

    async def _ping(self) -> None:
        """PINGREQ at half the keepalive; a broker silent for 1.5 keepalives is gone."""
        interval = max(self.keepalive / 2, 0.5)
        while self._transport is not None:
            await asyncio.sleep(interval)
            if time.monotonic() - self._received > 1.5 * self.keepalive:
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
        reason = LocalUnavailableError(
            f"connection to {self.where} lost" + (f": {exc}" if exc else ""))
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(reason if exc is None else
                                        LocalUnavailableError(str(exc) or type(exc).__name__))
        for future in self._subacks.values():
            if not future.done():
                future.set_exception(reason)
        self._subacks.clear()
        self._acks.clear()
        if not self.closed.done():
            self.closed.set_exception(reason)
            self.closed.exception()  # retrieved: nobody has to wait for it
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

    def _next_mid(self) -> int:
        mid = self._mid
        while True:
            mid = mid % 65535 + 1
            if mid not in self._acks and mid not in self._subacks:
                self._mid = mid
                return mid

    def publish_many(self, publications: Sequence[tuple[str, bytes, bool]], qos: int,
                     waiter: Waiter) -> int:
        """Write publications in one go; at QoS 1 `waiter.set()` is called once per PUBACK.
        Returns how many acknowledgements to expect."""
        if not self.connected:
            raise LocalUnavailableError(f"not connected to {self.where}")
        mids: list[int] = []
        if qos:  # the hot path: ids taken here, the packets encoded by the codec
            add = mids.append
            acks, subacks = self._acks, self._subacks
            mid = self._mid
            for _ in publications:
                mid = mid % 65535 + 1
                while mid in acks or mid in subacks:
                    mid = mid % 65535 + 1
                acks[mid] = waiter
                add(mid)
            self._mid = mid
        self._write(publish311_many(publications, qos, mids))
        return len(mids)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float | None = None) -> None:
        """Publish one message; at QoS 1 wait for its PUBACK."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Single(future)
        if not self.publish_many([(topic, payload, retain)], qos, waiter):
            return
        await self._until(future, timeout, f"no PUBACK for {topic}")

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        mid = self._next_mid()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._subacks[mid] = future
        self._write(subscribe311(mid, [topic], qos))
        codes = await self._until(future, self.timeout, f"no SUBACK for {topic}")
        if any(code >= 0x80 for code in codes):
            raise LocalUnavailableError(f"subscription to {topic} refused")

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

    async def message(self) -> tuple[str, bytes, bool]:
        """The next message received: (topic, payload, retain)."""
        if self._messages.empty():
            getter = asyncio.ensure_future(self._messages.get())
            try:
                await self._until(getter, None, "no message")
            finally:
                getter.cancel()
            return getter.result()
        return self._messages.get_nowait()

    def _feed(self, data: bytes) -> None:
        self._received = time.monotonic()
        acks, packets, malformed = self._reader.split(data)
        if acks:  # most of what comes: one PUBACK per publication
            pop = self._acks.pop
            for mid in acks:
                waiter = pop(mid, None)
                if waiter is not None:
                    waiter.set()
        for first, body in packets:
            kind = first & 0xF0
            if kind == PUBACK:
                waiter = self._acks.pop(packet_id(body), None)
                if waiter is not None:
                    waiter.set()
            elif kind == PUBLISH:
                self._on_publish(first, body)
            elif kind == CONNACK:
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(connack_code(body))
            elif kind == SUBACK:
                future = self._subacks.pop(packet_id(body), None)
                if future is not None and not future.done():
                    future.set_result(body[2:])
        if malformed:
            self._protocol_error("malformed remaining length")

    def _on_publish(self, first: int, body: bytes) -> None:
        topic, mid, payload = publish_fields(first, body)
        if first & 0x06:
            with contextlib.suppress(LocalUnavailableError):
                self._write(puback(mid))
        try:
            self._messages.put_nowait((topic, payload, bool(first & 0x01)))
        except asyncio.QueueFull:  # a flood: logged rate-limited
            self.dropped += 1
            self._bad.warning("queue", "local broker %s: %d messages not yet handled: "
                              "dropped the one on %.200r", self.where, MAX_QUEUED_MESSAGES,
                              topic)

    def _protocol_error(self, what: str) -> None:
        log.warning("local broker %s: %s: closing the connection", self.where, what)
        self.abort()
