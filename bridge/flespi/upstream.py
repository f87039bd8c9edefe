"""The upstream MQTT 5 connection to flespi, behind a small interface of the bridge's own.

`Upstream` is what the rest of the bridge sees: connect, subscribe, receive (a callback),
publish with MQTT 5 properties, acknowledge. `GmqttUpstream` implements it with gmqtt,
flespi's own Python client, which receives MQTT 5 with user properties about 4x faster
than aiomqtt here.

Three gmqtt behaviours are replaced, through a few private gmqtt hooks, each isolated in one
small function of `bridge.flespi.gmqtt_hooks`:
- PUBLISH packets are parsed by `bridge.mqtt.codec.parse_publish`, which reads only what the
  bridge uses (topic, packet id, user properties, payload) at about a third of gmqtt's cost
  per message (a start-up replays every retained value of the fleet); anything unusual (a
  topic alias, QoS 2, a malformed property block) is left to gmqtt's own parser.
- QoS 1 messages are acknowledged by the bridge, not on receipt: the PUBACK goes out only
  once the local publish that carries the message has succeeded, so a crash never loses an
  acknowledged update. Acks are sent in receive order, as MQTT requires.
- gmqtt's fixed-delay auto-reconnect is switched off; the service reconnects with its own
  exponential backoff and a fresh client on the same persistent session.

Flow control. The socket is read all the time, also while `receive_maximum` messages wait
for their acks (a local outage): gmqtt's keepalive closes the connection after 2x keepalive
without data in, so a paused socket, whose PINGRESPs stay unread, would cycle the flespi
connection for as long as the outage lasts. A conforming broker sends at most
`receive_maximum` unacknowledged messages anyway. Mosquitto 2.0.11 (as the tests run it,
`max_queued_messages 0`) does not: it sends receive maximum + 1, and once acks flow again it
dumps its whole queued backlog regardless (measured: 17,500 of a 20,000 backlog at receive
maximum 10). So, as a last resort only, reading is paused at `UNACKED_GUARD` unacknowledged
messages, far past any receive maximum and just short of the 65,535 packet ids (a broker past
that is reusing ids still in flight). That bounds the bridge's memory: an unacknowledged
message costs the bridge its ack token (~100 bytes, the message itself is merged into the
device state at once), so ~6 MB at the guard, plus at most one socket read (256 KiB) past
it. While paused, the keepalive may give up and the bridge reconnects: slower, never wrong,
since the broker redelivers everything unacknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gmqtt import Client as GmqttClient
from gmqtt import Subscription
from gmqtt.mqtt.constants import MQTTv50

from bridge.core.ledger import Ack
from bridge.exceptions import UpstreamError
from bridge.flespi import gmqtt_hooks as hooks
from bridge.mqtt.codec import parse_publish

log = logging.getLogger(__name__)

UserProperties = Sequence[tuple[str, str]]
# topic, payload, MQTT 5 user properties, ack token (None for QoS 0)
MessageHandler = Callable[[str, bytes, UserProperties, Ack | None], None]


# Unacknowledged QoS 1 messages at which reading pauses, as a last resort (see above).
UNACKED_GUARD = 60_000


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    host: str
    port: int
    username: str = field(repr=False)  # the flespi token: never in a repr, log or traceback
    client_id: str
    tls: ssl.SSLContext | None = None
    keepalive: int = 60
    session_expiry: int = 7 * 24 * 3600
    clean_start: bool = False
    receive_maximum: int = 5000
    # Seconds to wait for the CONNACK (TCP and TLS included), and for a SUBACK.
    timeout: float = 30.0


class UpstreamPublisher(Protocol):
    """What publishing on the upstream connection needs (REST over MQTT uses only this)."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None: ...


class Upstream(UpstreamPublisher, Protocol):
    """The bridge's view of an upstream MQTT 5 connection."""

    @property
    def session_present(self) -> bool: ...

    async def connect(self) -> None: ...

    async def subscribe(self, filters: Sequence[str], *, resend_retained: bool = True) -> None: ...

    async def unsubscribe(self, filters: Sequence[str]) -> None: ...

    def ack(self, tokens: Iterable[Ack]) -> None: ...

    async def wait_closed(self) -> None: ...

    async def disconnect(self) -> None: ...


def timestamp(user_properties: UserProperties) -> float | None:
    """flespi's `timestamp` user property: the value's time, float Unix seconds."""
    for key, value in user_properties:
        if key == "timestamp":
            try:
                ts = float(value)
            except ValueError:
                return None
            return ts if 0 < ts < 1e11 else None  # NaN, inf and nonsense are no time
    return None


class GmqttUpstream:
    """One connection attempt on gmqtt; create a new one to reconnect."""

    _generation = 0

    def __init__(self, options: ConnectOptions, on_message: MessageHandler, *,
                 unacked_guard: int = UNACKED_GUARD) -> None:
        self._options = options
        self._on_message = on_message
        GmqttUpstream._generation += 1
        self.generation = GmqttUpstream._generation
        self._closed = asyncio.Event()
        self._session_present = False
        # QoS 1 messages delivered but not yet acknowledged, and the last-resort bound on
        # them (never below what a conforming broker may send, plus Mosquitto's one extra).
        self._unacked = 0
        self._guard = max(unacked_guard, options.receive_maximum + 1)
        self._paused = False  # reading paused by the guard (not by asyncio's own buffering)
        self.pauses = 0  # times the guard paused reading, for tests and diagnostics
        # SUBACKs and UNSUBACKs awaited, by packet id (a split fleet subscribes devices
        # while the connection runs, several requests at once)
        self._acked: dict[int, asyncio.Future[None]] = {}
        client = GmqttClient(
            options.client_id,
            clean_session=options.clean_start,
            optimistic_acknowledgement=False,
            session_expiry_interval=options.session_expiry,
            receive_maximum=options.receive_maximum,
            logger=logging.getLogger("bridge.flespi.gmqtt"),
        )
        client.set_auth_credentials(options.username, None)
        client.on_message = self._on_qos0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        hooks.deliver_qos1_to(client, self._on_qos1)
        self._gmqtt_publish = hooks.receive_publish_with(client, self._on_publish)
        self._client = client

    # -- gmqtt callbacks ---------------------------------------------------------------

    def _on_qos0(self, _client: Any, topic: str | bytes, payload: bytes, _qos: int,
                 properties: dict[str, Any]) -> int:
        self._dispatch(topic, payload, properties, None)
        return 0

    def _on_qos1(self, mid: int, payload: bytes, topic: str | bytes,
                 properties: dict[str, Any]) -> None:
        self._dispatch(topic, payload, properties, self._received(mid))

    def _received(self, mid: int) -> Ack:
        """A QoS 1 message arrived: its ack token."""
        self._unacked += 1
        if self._unacked >= self._guard:
            self._pause()  # every time: asyncio's stream buffering may have resumed reading
        return self.generation, mid

    def _on_publish(self, cmd: int, raw: bytes) -> None:
        """Every PUBLISH packet: the fast parser, else gmqtt's (which calls `_on_qos0` or
        `_on_qos1`)."""
        parsed = parse_publish(raw, (cmd >> 1) & 0x03)
        if parsed is None:
            self._gmqtt_publish(cmd, raw)
            return
        topic, mid, users, payload = parsed
        self._on_message(topic, payload, users, None if mid is None else self._received(mid))

    def _pause(self) -> None:
        transport = hooks.transport(self._client)
        if transport is None or transport.is_closing() or not transport.is_reading():
            return
        transport.pause_reading()
        self.pauses += 1
        if not self._paused:
            (log.warning if self.pauses == 1 else log.debug)(
                "flespi sent %d unacknowledged messages, past its receive maximum of %d: "
                "reading paused until the bridge acknowledges some",
                self._unacked, self._options.receive_maximum)
        self._paused = True

    def _resume(self) -> None:
        self._paused = False
        transport = hooks.transport(self._client)
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _dispatch(self, topic: str | bytes, payload: bytes, properties: dict[str, Any],
                  ack: Ack | None) -> None:
        if isinstance(topic, bytes):  # gmqtt passes undecodable topics through as bytes
            topic = topic.decode("utf-8", "replace")
        self._on_message(topic, payload, properties.get("user_property", ()), ack)

    def _on_connect(self, _client: Any, flags: int, rc: int, _props: Any) -> None:
        self._session_present = bool(flags)

    def _on_disconnect(self, client: Any, _packet: Any, _exc: Any = None) -> None:
        hooks.stop_auto_reconnect(client)  # the service owns reconnection (backoff + jitter)
        self._closed.set()
        acked, self._acked = self._acked, {}
        for waiter in acked.values():
            if not waiter.done():
                waiter.set_exception(UpstreamError("connection lost while subscribing"))

    def _on_subscribe(self, _client: Any, mid: int, qos: Sequence[int], _props: Any) -> None:
        self._answered(mid, qos, "subscription")

    def _on_unsubscribe(self, _client: Any, mid: int, codes: Sequence[int]) -> None:
        self._answered(mid, codes, "unsubscription")

    def _answered(self, mid: int, codes: Sequence[int], what: str) -> None:
        waiter = self._acked.pop(mid, None)
        if waiter is None or waiter.done():
            return
        # 0x11 in an UNSUBACK: no such subscription, which is what was asked for
        refused = [code for code in codes if code >= 0x80]
        if refused:
            waiter.set_exception(UpstreamError(f"{what} refused (reason codes {refused})"))
        else:
            waiter.set_result(None)

    # -- Upstream interface ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return not self._closed.is_set() and bool(self._client.is_connected)

    @property
    def session_present(self) -> bool:
        return self._session_present

    @property
    def unacked(self) -> int:
        """QoS 1 messages delivered and not yet acknowledged on this connection."""
        return self._unacked

    async def connect(self) -> None:
        o = self._options
        try:
            async with asyncio.timeout(o.timeout) as deadline:
                await self._client.connect(
                    o.host, o.port, ssl=o.tls or False, keepalive=o.keepalive, version=MQTTv50
                )
        except Exception as exc:
            await self._abandon()
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise UpstreamError(
                    f"cannot connect to {o.host}:{o.port}: no CONNACK within {o.timeout:g}s"
                ) from None
            raise UpstreamError(f"cannot connect to {o.host}:{o.port}: {_describe(exc)}") from None

    async def subscribe(self, filters: Sequence[str], *, resend_retained: bool = True) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK.

        `resend_retained=False` (retain handling 1) skips the retained replay for
        subscriptions the resumed session already has.
        """
        handling = 0 if resend_retained else 1
        subs = [Subscription(f, qos=1, retain_handling_options=handling) for f in filters]
        mid = self._client.subscribe(subs)
        hooks.forget_subscriptions(self._client)
        await self._answer(mid, f"no SUBACK from {{}} (subscribing to {len(subs)} topic filters)")

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Unsubscribe and wait for the UNSUBACK."""
        mid = self._client.unsubscribe(list(filters))
        await self._answer(mid, f"no UNSUBACK from {{}} ({len(filters)} topic filters)")

    async def _answer(self, mid: int, timed_out: str) -> None:
        o = self._options
        if self._closed.is_set():  # nothing will answer
            raise UpstreamError("connection lost while subscribing")
        waiter = self._acked[mid] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(waiter, o.timeout)
        except TimeoutError:
            self._acked.pop(mid, None)
            where = f"{o.host}:{o.port} within {o.timeout:g}s"
            raise UpstreamError(timed_out.format(where)) from None

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None:
        if not self.connected:
            raise UpstreamError("not connected to flespi")
        props: dict[str, Any] = {}
        if response_topic is not None:
            props["response_topic"] = response_topic
        if correlation_data is not None:
            props["correlation_data"] = correlation_data
        if user_properties:
            props["user_property"] = list(user_properties)
        self._client.publish(topic, payload, qos=qos, retain=retain, **props)

    def ack(self, tokens: Iterable[Ack]) -> None:
        """PUBACK these messages, in the order given (the order they were received)."""
        if not self.connected:
            return
        packets = bytearray()
        for generation, mid in tokens:
            if generation == self.generation:
                packets += b"\x40\x02" + mid.to_bytes(2, "big")
        if packets:
            hooks.send_raw(self._client, bytes(packets))
            self._unacked = max(0, self._unacked - len(packets) // 4)
            if self._paused and self._unacked < self._guard:
                self._resume()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def disconnect(self) -> None:
        if self._closed.is_set():
            return
        try:
            await asyncio.wait_for(self._client.disconnect(), timeout=5)
        except (TimeoutError, OSError) as exc:
            log.debug("upstream disconnect: %s", _describe(exc))
        self._closed.set()

    async def _abandon(self) -> None:
        """After a failed or timed-out connect: no gmqtt retry, no half-open socket."""
        hooks.stop_auto_reconnect(self._client)
        self._closed.set()
        transport = hooks.transport(self._client)
        if transport is not None:
            transport.abort()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
