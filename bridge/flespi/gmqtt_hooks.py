"""The private gmqtt hooks `bridge.flespi.upstream` needs: each reaches into gmqtt 0.8
internals for one reason, said in its docstring, and nothing else does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def deliver_qos1_to(client: Any, handler: Callable[[int, bytes, str | bytes, dict[str, Any]],
                                                     None]) -> None:
    """Hand QoS 1 PUBLISHes to `handler` with their packet id, and send no PUBACK: gmqtt
    acks on receipt (or when on_message returns), the bridge only once the local broker has
    the update (`GmqttUpstream.ack`)."""
    client._package_handler._handle_qos_1_publish_packet = handler


def receive_publish_with(client: Any, handler: Callable[[int, bytes], None]
                          ) -> Callable[[int, bytes], None]:
    """Hand every PUBLISH packet (first byte, rest of the packet) to `handler` instead of
    gmqtt's parser, which is returned: the handler passes on what it does not parse."""
    package_handler = client._package_handler
    original: Callable[[int, bytes], None] = package_handler._handle_publish_packet
    package_handler._handle_publish_packet = handler
    package_handler._handler_cache.clear()  # the dispatch caches handlers by packet type
    return original


def forget_subscriptions(client: Any) -> None:
    """Drop gmqtt's list of the subscriptions made: it keeps them only to resubscribe on its
    own reconnect (switched off), and scans all of them at every SUBACK, which a split fleet
    subscribing devices a packet at a time would pay for quadratically."""
    client.subscriptions.clear()


def stop_auto_reconnect(client: Any) -> None:
    """gmqtt reconnects by itself after a lost connection, at a fixed delay and with the
    same client; the service reconnects with backoff and a fresh `GmqttUpstream` instead."""
    client._connection_state.reconnecting_now = True


def send_raw(client: Any, data: bytes) -> None:
    """Write encoded packets (the deferred PUBACKs): gmqtt has no public call for a PUBACK,
    and one write for a batch of acks is what keeps acknowledging cheap."""
    client._connection.send_package(data)


def transport(client: Any) -> asyncio.Transport | None:
    """The connection's socket transport, to pause reading at the last-resort guard: gmqtt
    offers no flow control of its own."""
    connection = getattr(client, "_connection", None)
    transport: asyncio.Transport | None = getattr(connection, "_transport", None)
    return transport
