"""The upstream MQTT 5 connection to flespi, behind a small interface of the bridge's own.

`Upstream` is what the rest of the bridge sees: connect, subscribe, receive (a callback),
publish with MQTT 5 properties, acknowledge. `GmqttUpstream` implements it with gmqtt,
flespi's own Python client, which receives MQTT 5 with user properties about 4x faster
than aiomqtt here.

Two gmqtt behaviours are replaced, both through the package handler of one client:
- QoS 1 messages are acknowledged by the bridge, not on receipt: the PUBACK goes out only
  once the local publish that carries the message has succeeded, so a crash never loses an
  acknowledged update. Acks are sent in receive order, as MQTT requires.
- gmqtt's fixed-delay auto-reconnect is switched off; the service reconnects with its own
  exponential backoff and a fresh client on the same persistent session.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gmqtt import Client as GmqttClient
from gmqtt import Subscription
from gmqtt.mqtt.constants import MQTTv50

from bridge.exceptions import BridgeError

log = logging.getLogger(__name__)

# (connection generation, packet id): acks for an earlier connection are void, because the
# broker redelivers those messages and packet ids are reused on the new connection.
Ack = tuple[int, int]
UserProperties = Sequence[tuple[str, str]]
# topic, payload, MQTT 5 user properties, ack token (None for QoS 0)
MessageHandler = Callable[[str, bytes, UserProperties, Ack | None], None]


class UpstreamError(BridgeError):
    """The upstream connection failed or was refused."""


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    host: str
    port: int
    username: str
    client_id: str
    tls: ssl.SSLContext | None = None
    keepalive: int = 60
    session_expiry: int = 7 * 24 * 3600
    clean_start: bool = False
    receive_maximum: int = 5000


class Upstream(Protocol):
    """The bridge's view of an upstream MQTT 5 connection."""

    @property
    def connected(self) -> bool: ...

    @property
    def session_present(self) -> bool: ...

    async def connect(self) -> None: ...

    async def subscribe(self, filters: Sequence[str], *, resend_retained: bool = True) -> None: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None: ...

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

    def __init__(self, options: ConnectOptions, on_message: MessageHandler) -> None:
        self._options = options
        self._on_message = on_message
        GmqttUpstream._generation += 1
        self.generation = GmqttUpstream._generation
        self._closed = asyncio.Event()
        self._session_present = False
        # QoS 1 messages delivered but not yet acknowledged. At `receive_maximum` the socket
        # stops being read: the broker should not send more anyway, and if it does (Mosquitto
        # 2.0 overshoots), TCP backpressure keeps the bridge's memory bounded.
        self._unacked = 0
        self._paused = False
        self._subscribed: asyncio.Future[None] | None = None
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
        # Deliver QoS 1 messages with their packet id and leave the PUBACK to `ack`.
        client._package_handler._handle_qos_1_publish_packet = self._on_qos1
        self._client = client

    # -- gmqtt callbacks ---------------------------------------------------------------

    def _on_qos0(self, _client: Any, topic: str | bytes, payload: bytes, _qos: int,
                 properties: dict[str, Any]) -> int:
        self._dispatch(topic, payload, properties, None)
        return 0

    def _on_qos1(self, mid: int, payload: bytes, topic: str | bytes,
                 properties: dict[str, Any]) -> None:
        self._unacked += 1
        if self._unacked >= self._options.receive_maximum and not self._paused:
            self._set_reading(False)
        self._dispatch(topic, payload, properties, (self.generation, mid))

    def _set_reading(self, on: bool) -> None:
        transport = getattr(self._client._connection, "_transport", None)
        if transport is None or transport.is_closing():
            return
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()
        self._paused = not on

    def _dispatch(self, topic: str | bytes, payload: bytes, properties: dict[str, Any],
                  ack: Ack | None) -> None:
        if isinstance(topic, bytes):  # gmqtt passes undecodable topics through as bytes
            topic = topic.decode("utf-8", "replace")
        self._on_message(topic, payload, properties.get("user_property", ()), ack)

    def _on_connect(self, _client: Any, flags: int, rc: int, _props: Any) -> None:
        self._session_present = bool(flags)

    def _on_disconnect(self, client: Any, _packet: Any, _exc: Any = None) -> None:
        # The service owns reconnection (backoff + jitter); stop gmqtt's own retry loop.
        client._connection_state.reconnecting_now = True
        self._closed.set()
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_exception(UpstreamError("connection lost while subscribing"))

    def _on_subscribe(self, _client: Any, _mid: int, qos: Sequence[int], _props: Any) -> None:
        if self._subscribed is not None and not self._subscribed.done():
            refused = [code for code in qos if code >= 0x80]
            if refused:
                self._subscribed.set_exception(
                    UpstreamError(f"subscription refused (reason codes {refused})")
                )
            else:
                self._subscribed.set_result(None)

    # -- Upstream interface ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return not self._closed.is_set() and bool(self._client.is_connected)

    @property
    def session_present(self) -> bool:
        return self._session_present

    async def connect(self) -> None:
        o = self._options
        try:
            await self._client.connect(
                o.host, o.port, ssl=o.tls or False, keepalive=o.keepalive, version=MQTTv50
            )
        except Exception as exc:
            self._closed.set()
            raise UpstreamError(f"cannot connect to {o.host}:{o.port}: {_describe(exc)}") from None

    async def subscribe(self, filters: Sequence[str], *, resend_retained: bool = True) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK.

        `resend_retained=False` (retain handling 1) skips the retained replay for
        subscriptions the resumed session already has.
        """
        handling = 0 if resend_retained else 1
        subs = [Subscription(f, qos=1, retain_handling_options=handling) for f in filters]
        self._subscribed = asyncio.get_running_loop().create_future()
        self._client.subscribe(subs)
        await self._subscribed

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
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
        self._client.publish(topic, payload, qos=qos, **props)

    def ack(self, tokens: Iterable[Ack]) -> None:
        if not self.connected:
            return
        packets = bytearray()
        for generation, mid in tokens:
            if generation == self.generation:
                packets += b"\x40\x02" + mid.to_bytes(2, "big")
        if packets:
            self._client._connection.send_package(bytes(packets))
            self._unacked = max(0, self._unacked - len(packets) // 4)
            if self._paused and self._unacked < self._options.receive_maximum:
                self._set_reading(True)

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


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def tls_context(ca_file: str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client TLS context that verifies the server (system CAs unless `ca_file`)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
