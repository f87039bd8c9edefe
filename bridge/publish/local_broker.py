"""The local broker connection: publishes the fleet, receives commands.

Keeps one connection alive with backoff; `<base>/bridge/state` is `online` while connected
and the retained will says `offline` when the bridge dies. The MQTT client is the bridge's
own (`bridge.mqtt.client`), made for publishing retained state in bulk.

It speaks MQTT 5, or MQTT 3.1.1 to a broker that refuses MQTT 5 (said once in the log). A
publication the broker refuses (too large for its Maximum Packet Size, an ACL, a
`message_size_limit`) is that publication's failure, not the connection's: it counts as
answered (what it carried is acknowledged upstream: retrying cannot help), is counted in
`flespi_bridge_dropped_total{reason="too_large"|"refused"}` and logged once per topic.
Another client taking the session (same `local.client_id`, MQTT 5) is an error and a long
wait, not a fight.

With a split fleet (`[cluster] shards` > 1) the connection runs the lease protocol
(`bridge.publish.lease`): on every connect it subscribes first, publishes the lease, then
`online` on this replica's own state topic, and reads leases and states until its own lease
has come back. Only then is it `connected` (the publisher waits for that), and the messages
that arrived meanwhile (commands) are handed on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence

from bridge.config.sections import LocalSettings, ReconnectSettings
from bridge.config.tls import local_tls_context
from bridge.core.backoff import STABLE_AFTER, Backoff
from bridge.core.events import EventHub, LocalConnected
from bridge.core.stats import Stats
from bridge.core.transport import Handler, Publication, Routes
from bridge.exceptions import LocalUnavailableError
from bridge.mqtt.client import MqttClient
from bridge.mqtt.flight import PACKET_TOO_LARGE, Pub
from bridge.mqtt.options import (
    Options,
    ProtocolRefusedError,
    PublishRefusedError,
    SessionTakenOverError,
    Will,
)
from bridge.mqtt.v5 import reason
from bridge.publish import inventory
from bridge.publish.lease import Lease

log = logging.getLogger(__name__)

# Concurrent `publish` calls (results and other single publications).
PUBLISH_WINDOW = 256
# Seconds to connect (TCP, TLS and the CONNACK) and to wait for a SUBACK.
TIMEOUT = 10.0
# Seconds to wait after another client took our session: long enough that two bridges
# sharing a client id do not take it from each other over and over.
TAKEN_OVER_DELAY = 300.0
# Refused topics remembered so that each is logged once (then the memory starts over).
LOGGED_REFUSALS = 10_000


class LocalBroker:
    """Implements `bridge.core.transport.LocalLink`: publishes, and hands each message to
    the part that routed its topic. Says `LocalConnected` on the event hub after every
    connect, once subscribed (so replayed retained messages arrive after it)."""

    def __init__(self, settings: LocalSettings, reconnect: ReconnectSettings, *,
                 state_topic: str, stats: Stats, events: EventHub, lease: Lease | None = None
                 ) -> None:
        """`lease`: this replica's, with a split fleet (None: a single bridge)."""
        self.settings = settings
        self.lease = lease
        self._backoff = Backoff(reconnect.min_delay, reconnect.max_delay)
        self._state_topic = state_topic
        self._routes = Routes()
        self._stats = stats
        self._events = events
        self._client: MqttClient | None = None
        # Built once, at start: a bad certificate is a start-up error, not a dead loop.
        self._tls = local_tls_context(settings)
        self._connected = asyncio.Event()
        self.connects = 0
        self._window = asyncio.Semaphore(PUBLISH_WINDOW)
        # 4 once the broker refused MQTT 5 and took MQTT 3.1.1 (local.protocol = "auto")
        self.protocol = 4 if settings.protocol == "3.1.1" else 5
        self._fell_back = ""  # why MQTT 5 was refused, until MQTT 3.1.1 is tried
        self._refused_topics: set[str] = set()
        if lease is not None:
            for topic_filter, handler in lease.routes():
                self.route(topic_filter, handler)

    async def start(self) -> None:
        """Nothing to prepare: `run` is an essential task (`bridge.app.supervisor`)."""

    def route(self, topic_filter: str, handler: Handler) -> None:
        self._routes.add(topic_filter, handler)

    def _make_client(self, *, suffix: str = "", will: bool = True) -> MqttClient:
        s = self.settings
        return MqttClient(
            s.host,
            s.port,
            client_id=s.client_id + suffix,
            options=Options(
                username=s.username,
                password=s.password.get_secret_value() if s.password else None,
                will=Will(self._state_topic, b"offline", qos=1, retain=True) if will else None,
                keepalive=s.keepalive,
                tls=self._tls,
                timeout=TIMEOUT,
                protocol=self.protocol,
            ),
        )

    async def run(self) -> None:
        """Stay connected until cancelled."""
        s = self.settings
        while True:
            client = self._make_client()
            up_since: float | None = None
            try:
                await client.connect()
                self._client = client
                held = await self._hello(client)
                self._backoff.reset()
                up_since = time.monotonic()
                if self._fell_back:
                    log.warning("local broker %s:%s: %s: connected with MQTT 3.1.1, and "
                                "will keep to it. Over MQTT 3.1.1 the broker cannot say that "
                                "it refused a publication (see local.max_string_length). "
                                "local.protocol = \"3.1.1\" skips trying MQTT 5 at start",
                                s.host, s.port, self._fell_back)
                    self._fell_back = ""
                self.connects += 1
                self.connected.set()
                log.info("connected to local broker %s:%s", s.host, s.port)
                if self.connects > 1:
                    self._stats.reconnects["local"] += 1
                self._stats.up["local"] = True
                self._events.emit(LocalConnected(self.connects))
                for message in held:
                    self._routes.dispatch(*message)
                while True:
                    topic, payload, retain = await client.message()
                    self._routes.dispatch(topic, payload, retain)
            except LocalUnavailableError as exc:
                self._lost()
                if isinstance(exc, ProtocolRefusedError) and s.protocol == "auto":
                    self.protocol = 4  # at once, without a backoff: kept if it connects
                    self._fell_back = str(exc)
                    continue
                if self._fell_back:  # MQTT 3.1.1 failed too: MQTT 5 was not the reason
                    self.protocol, self._fell_back = 5, ""
                delay = self._backoff.next()
                if isinstance(exc, SessionTakenOverError):
                    delay = max(delay, TAKEN_OVER_DELAY)
                    log.error("local broker %s:%s: %s: another client connected with client "
                              "id %r (two bridges, or two replicas, sharing local.client_id?); "
                              "give each bridge its own. Reconnecting in %.0fs", s.host,
                              s.port, exc, s.client_id, delay)
                elif isinstance(exc, ProtocolRefusedError):  # local.protocol = "5"
                    log.error("local broker %s:%s: %s, and local.protocol is \"5\": "
                              "reconnecting in %.0fs", s.host, s.port, exc, delay)
                elif up_since is not None and time.monotonic() - up_since < STABLE_AFTER:
                    log.error("local broker %s:%s: %s, %.1fs after connecting; reconnecting "
                              "in %.1fs. If this repeats: is another client connected with "
                              "client id %r (two bridges, or two replicas, sharing "
                              "local.client_id)? Does the broker refuse what the bridge "
                              "publishes (its log says why)?", s.host, s.port, exc,
                              time.monotonic() - up_since, delay, s.client_id)
                else:
                    # a refused login or TLS failure must be visible at the default level
                    log.warning("local broker %s:%s: %s; reconnecting in %.1fs", s.host,
                                s.port, exc, delay)
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self._lost()
                await client.disconnect()  # stopping: a clean DISCONNECT, no will
                raise
            finally:
                self._lost()
                client.abort()

    async def _hello(self, client: MqttClient) -> list[tuple[str, bytes, bool]]:
        """`online` and the subscriptions; with a lease, the subscriptions first, then the
        lease and `online`, then the leases and states read until ours is back (within
        `TIMEOUT`). Returns the other messages that arrived meanwhile, in order."""
        lease = self.lease
        if lease is None:
            await self._say_online(client)
        for topic in self._routes.filters:
            await client.subscribe(topic, qos=1)
        if lease is None:
            return []
        for pub in lease.hello():
            try:
                await client.publish(pub.topic, pub.payload, qos=1, retain=True)
            except PublishRefusedError as exc:  # without it the view is never complete
                raise LocalUnavailableError(f"the broker refused this replica's lease ({exc}): "
                                            f"may it publish to {pub.topic}?") from None
        await self._say_online(client)
        held = []
        try:
            async with asyncio.timeout(TIMEOUT):
                while not lease.complete:
                    message = await client.message()
                    if lease.wants(message[0]):
                        self._routes.dispatch(*message)
                    else:
                        held.append(message)
        except TimeoutError:
            raise LocalUnavailableError(
                f"this replica's lease did not come back within {TIMEOUT:g}s (may it "
                f"subscribe to {lease.routes()[0][0]}?)") from None
        return held

    async def _say_online(self, client: MqttClient) -> None:
        try:
            await client.publish(self._state_topic, b"online", qos=1, retain=True)
        except PublishRefusedError as exc:
            log.warning("%s", exc)

    def answers(self, device_id: int | None) -> bool:
        """Whether this replica executes and answers a command for `device_id`: always,
        for a single bridge; with a split fleet, the lease says."""
        return self.lease is None or self.lease.answers(device_id)

    @property
    def connected(self) -> asyncio.Event:
        return self._connected

    def _lost(self) -> None:
        if self.connected.is_set():
            self.connected.clear()
            self._stats.up["local"] = False
        self._client = None

    async def retained(self, pages: Sequence[str], *,
                       page_timeout: float = inventory.PAGE_TIMEOUT) -> set[str]:
        """Topics holding a retained message under the filters `pages` (see
        `bridge.publish.inventory`; raises its `InventoryError`).

        Uses a second, short-lived connection, so the main one never sees (and never acts
        twice on) messages matched by these wide filters.
        """
        client = self._make_client(suffix=f"-inventory-{uuid.uuid4().hex[:6]}", will=False)
        return await inventory.take(client, pages, self._state_topic,
                                    page_timeout=page_timeout)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        client = self._client
        if client is None or not self.connected.is_set():
            raise LocalUnavailableError("local broker not connected")
        async with self._window:
            try:
                await client.publish(topic, payload, qos=self.settings.qos, retain=retain)
            except LocalUnavailableError as exc:
                raise LocalUnavailableError(f"publish to {topic} failed: {exc}") from None
            except PublishRefusedError as exc:
                self._refused((topic, payload, retain), exc.code)

    def _refused(self, publication: Pub, code: int) -> None:
        """A publication the broker refused: counted, and logged once per topic."""
        too_large = code == PACKET_TOO_LARGE
        self._stats.dropped["too_large" if too_large else "refused"] += 1
        topic = publication[0]
        if topic in self._refused_topics:
            return
        if len(self._refused_topics) >= LOGGED_REFUSALS:
            self._refused_topics.clear()
        self._refused_topics.add(topic)
        limit = self._client.max_packet_size if too_large and self._client else None
        log.warning("local broker refused the publication on %s (%d bytes%s): %s; dropped, "
                    "the next one on this topic is tried again", topic, len(publication[1]),
                    f", its Maximum Packet Size is {limit}" if limit else "",
                    reason(code))

    def publish_nowait(self, publications: Sequence[Publication]) -> asyncio.Future[None]:
        """Hand publications to the broker at once; the future completes when the broker has
        acknowledged all of them, and fails with LocalUnavailableError if the connection is
        lost first. Raises LocalUnavailableError at once when not connected.

        The fast path for bursts: the batch is written in one go, and one countdown counts
        its acknowledgements."""
        client = self._client
        if client is None or not self.connected.is_set() or not client.connected:
            raise LocalUnavailableError("local broker not connected")
        countdown = _Countdown(asyncio.get_running_loop(), self._refused)
        countdown.remaining = client.publish_many(publications, self.settings.qos, countdown)
        if countdown.remaining <= 0:
            countdown.future.set_result(None)
        else:
            client.on_lost(countdown.lost)
            countdown.future.add_done_callback(lambda _: client.remove_on_lost(countdown.lost))
        return countdown.future

    async def stop(self) -> None:
        """Graceful shutdown: say `offline` ourselves (the will only fires on a crash), also
        while still connecting: `online` may already be out. The connection itself ends
        with `run`'s task, later, with a clean DISCONNECT (no will)."""
        client = self._client
        if client is not None and client.connected:
            try:
                await client.publish(self._state_topic, b"offline", qos=1, retain=True,
                                     timeout=5)
            except (LocalUnavailableError, PublishRefusedError) as exc:
                log.warning("could not publish offline state: %s", exc)


class _Countdown:
    """Counts a batch's acknowledgements: the client calls `set()` on each PUBACK; the
    future completes with the last one."""

    __slots__ = ("future", "refused", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 refused: Callable[[Pub, int], None]) -> None:
        self.remaining = 0
        self.future: asyncio.Future[None] = loop.create_future()
        # a refusal completes its publication like a PUBACK: counted, logged, released
        self.refused = refused

    def set(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0 and not self.future.done():
            self.future.set_result(None)

    def lost(self) -> None:
        if not self.future.done():
            self.future.set_exception(LocalUnavailableError("connection lost while publishing"))
            self.future.exception()  # whoever waits sees it; nobody has to
