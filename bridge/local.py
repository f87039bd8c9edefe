"""The local broker connection (aiomqtt): publishes the fleet, receives commands.

Keeps one connection alive with backoff; `<base>/bridge/state` is `online` while connected
and the retained will says `offline` when the bridge dies.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

from bridge.backoff import Backoff
from bridge.config import LocalSettings, ReconnectSettings, local_tls_context
from bridge.exceptions import LocalUnavailableError
from bridge.transport import Publication

log = logging.getLogger(__name__)

# Concurrent `publish` calls (results and other single publications).
PUBLISH_WINDOW = 256
# Small MQTT packets must not wait for Nagle's algorithm (up to 40 ms on loopback).
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class LocalBroker:
    """Implements `bridge.transport.LocalTransport` on aiomqtt."""

    def __init__(
        self,
        settings: LocalSettings,
        reconnect: ReconnectSettings,
        *,
        state_topic: str,
        on_message: Callable[[str, bytes, bool], Awaitable[None]],
        on_connect: Callable[[], Awaitable[None]],
        on_disconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self._backoff = Backoff(reconnect.min_delay, reconnect.max_delay)
        self._state_topic = state_topic
        self._subscriptions: list[str] = []
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._client: aiomqtt.Client | None = None
        # Built once, at start: a bad certificate is a start-up error, not a dead loop.
        self._tls = local_tls_context(settings)
        self._connected = asyncio.Event()
        self.connects = 0
        self._window = asyncio.Semaphore(PUBLISH_WINDOW)

    def _make_client(self, *, suffix: str = "", will: bool = True) -> aiomqtt.Client:
        s = self.settings
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            identifier=s.client_id + suffix,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            keepalive=s.keepalive,
            will=aiomqtt.Will(self._state_topic, b"offline", qos=1, retain=True) if will else None,
            tls_context=self._tls,
            tls_insecure=s.tls_insecure if s.tls else None,
            timeout=10,
            # Unlimited in paho: the bridge bounds what is in flight itself, and paho's own
            # limit costs a scan of every queued message on each acknowledgement.
            max_inflight_messages=0,
            max_queued_incoming_messages=10_000,
            socket_options=NODELAY,
            logger=logging.getLogger("bridge.local.mqtt"),
        )
        client.pending_calls_threshold = PUBLISH_WINDOW * 2
        return client

    async def run(self) -> None:
        """Stay connected until cancelled."""
        s = self.settings
        while True:
            client = self._make_client()
            try:
                async with client:
                    self._client = client
                    await client.publish(self._state_topic, b"online", qos=1, retain=True)
                    for topic in self._subscriptions:
                        await client.subscribe(topic, qos=1)
                    self._backoff.reset()
                    self.connects += 1
                    self.connected.set()
                    log.info("connected to local broker %s:%s", s.host, s.port)
                    await self._on_connect()
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes):
                            payload = str(payload).encode()
                        await self._on_message(message.topic.value, payload,
                                               bool(message.retain))
            except aiomqtt.MqttError as exc:
                self._lost()
                delay = self._backoff.next()
                # a refused login or TLS failure must be visible at the default level too
                log.warning("local broker %s:%s: %s; reconnecting in %.1fs", s.host, s.port,
                            exc, delay)
                await asyncio.sleep(delay)
            finally:
                self._lost()
                _retrieve_disconnect(client)

    def subscribe(self, filters: Sequence[str]) -> None:
        """What to subscribe to on every connect (set before `run`)."""
        self._subscriptions = list(filters)

    @property
    def connected(self) -> asyncio.Event:
        return self._connected

    def _lost(self) -> None:
        if self.connected.is_set():
            self.connected.clear()
            self._on_disconnect()
        self._client = None

    async def retained(self, filters: Sequence[str], timeout: float = 60) -> set[str]:
        """Topics holding a retained message under `filters`.

        Uses a second, short-lived connection, so the main one never sees (and never acts
        twice on) messages matched by these wide filters. A marker published after the
        subscriptions arrives after every retained message they deliver.
        """
        marker = f"{self._state_topic}/inventory-{uuid.uuid4().hex[:8]}"
        found: set[str] = set()
        client = self._make_client(suffix=f"-inventory-{uuid.uuid4().hex[:6]}", will=False)
        try:
            async with asyncio.timeout(timeout), client:
                for topic in (*filters, marker):
                    await client.subscribe(topic, qos=1)
                await client.publish(marker, b"1", qos=1)
                async for message in client.messages:
                    topic = message.topic.value
                    if topic == marker:
                        break
                    if message.retain and message.payload:
                        found.add(topic)
        finally:
            _retrieve_disconnect(client)
        return found

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True,
) -> None:
        client = self._client
        if client is None or not self.connected.is_set():
            raise LocalUnavailableError("local broker not connected")
        async with self._window:
            try:
                await client.publish(
                    topic, payload, qos=self.settings.qos, retain=retain
                )
            except aiomqtt.MqttError as exc:
                raise LocalUnavailableError(f"publish to {topic} failed: {exc}") from None

    def publish_nowait(self, publications: Sequence[Publication]) -> asyncio.Future[None]:
        """Hand publications to paho at once; the future completes when the broker has
        acknowledged all of them, and fails with LocalUnavailableError if the connection is
        lost first. Raises LocalUnavailableError at once when not connected.

        The fast path for bursts: one countdown stands in for aiomqtt's per-publish event,
        so a publication costs no coroutine, task or event.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            raise LocalUnavailableError("local broker not connected")
        paho_client, pending, disconnected = _internals(client)
        if disconnected.done():
            raise LocalUnavailableError("local broker not connected")
        qos = self.settings.qos
        countdown = _Countdown(asyncio.get_running_loop())
        for pub in publications:
            info = paho_client.publish(pub.topic, pub.payload, qos, pub.retain)
            if info.rc != 0:
                countdown.fail()
                raise LocalUnavailableError(f"publish to {pub.topic} failed (rc {info.rc})")
            if qos and not info.is_published():
                countdown.remaining += 1
                pending[info.mid] = countdown
        if countdown.remaining <= 0:
            countdown.future.set_result(None)
        else:
            disconnected.add_done_callback(countdown.lost)
            countdown.future.add_done_callback(
                lambda _: disconnected.remove_done_callback(countdown.lost))
        return countdown.future

    async def publish_offline(self) -> None:
        """Graceful shutdown: say `offline` ourselves (the will only fires on a crash).

        Also while still connecting: `online` may already be out."""
        if self._client is not None:
            try:
                await self._client.publish(self._state_topic, b"offline", qos=1, retain=True,
                                           timeout=5)
            except aiomqtt.MqttError as exc:
                log.warning("could not publish offline state: %s", exc)


class _Countdown:
    """Stands in for aiomqtt's per-publish asyncio.Event: aiomqtt calls `set()` when the
    broker acknowledges a publication; the future completes with the last one."""

    __slots__ = ("future", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.remaining = 0
        self.future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0 and not self.future.done():
            self.future.set_result(None)

    def lost(self, _: object = None) -> None:
        self.fail()

    def fail(self) -> None:
        if not self.future.done():
            self.future.set_exception(LocalUnavailableError("connection lost while publishing"))
            self.future.exception()  # whoever waits sees it; nobody has to


def _internals(client: aiomqtt.Client
               ) -> tuple[paho.Client, dict[int, Any], asyncio.Future[None]]:
    """aiomqtt's private parts, in this one place: its paho client, the table of publishes
    awaiting acknowledgement (mid -> an object with `set()`, called on PUBACK), and the
    future that fails when the connection is lost. aiomqtt has no public batch publish:
    awaiting one `publish` coroutine per message costs a task and an event each, which
    halves the bridge's throughput (bench/README.md). Pinned by aiomqtt<3."""
    return client._client, client._pending_publishes, client._disconnected


def _retrieve_disconnect(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's disconnect error as seen: when the connection drops mid-publish it is
    never retrieved, and asyncio would log "Future exception was never retrieved"."""
    future = _internals(client)[2]
    if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
        future.exception()
