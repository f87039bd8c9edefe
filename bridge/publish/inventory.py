"""The inventory of retained topics on the local broker, complete on a stock broker.

A broker hands a new subscriber every retained message its filter matches at once, and a
stock Mosquitto (Home Assistant's add-on: `max_inflight_messages 20`,
`max_queued_messages 1000`) keeps at most 1,020 QoS 1 messages queued for a client: past
that, the rest of the replay is silently dropped (measured: 1,020 of 5,000). QoS 0 messages
are not queued but written as the socket takes them, and only dropped once 1,000 packets
wait behind a full socket; a reader that keeps up receives them all (measured on loopback:
all of 40,000 300-byte messages in 0.5 s). So the inventory:

- subscribes at QoS 0, one page (filter) at a time, each page ended by a marker published
  after its subscription (a broker delivers a client's messages in order: the marker comes
  after every retained message of the page), so a page never starts behind another one's
  backlog;
- publishes the marker at QoS 0, so nothing is ever awaited while the replay arrives (a
  PUBACK would be queued behind the whole replay, and the messages read meanwhile would
  pile up in the client);
- takes a page whose marker does not come within `page_timeout` for a failure (a broker
  that dropped part of a page may drop the marker behind it too); the caller retries. The
  client itself never drops: it stops reading while its reader is behind
  (`bridge.mqtt.inbox`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from bridge.exceptions import LocalUnavailableError
from bridge.mqtt.client import MqttClient

# Seconds a page's marker may take (a page of 40,000 topics takes half a second).
PAGE_TIMEOUT = 30.0


class InventoryError(LocalUnavailableError):
    """The inventory is incomplete: a page's marker never came, or the connection failed."""


class SubscriptionRefused(InventoryError):
    """The broker refuses a page's subscription (an ACL): retrying will not help."""


async def take(client: MqttClient, pages: Sequence[str], marker_base: str, *,
               page_timeout: float = PAGE_TIMEOUT) -> set[str]:
    """Topics holding a retained message under any of `pages`, read through `client` (a
    fresh connection, not yet connected; always closed on return)."""
    marker = f"{marker_base}/inventory-{uuid.uuid4().hex[:8]}"
    found: set[str] = set()
    try:
        await client.connect()
        await client.subscribe(marker, qos=0)
        for number, page in enumerate(pages):
            try:
                await client.subscribe(page, qos=0)
            except LocalUnavailableError as exc:
                if "refused" in str(exc):
                    raise SubscriptionRefused(str(exc)) from None
                raise
            await client.publish(marker, str(number).encode(), qos=0)
            await _read_page(client, marker, str(number).encode(), found, page_timeout, page)
        await client.disconnect()
    except InventoryError:
        raise
    except LocalUnavailableError as exc:
        raise InventoryError(str(exc)) from None
    finally:
        client.abort()
    return found


async def _read_page(client: MqttClient, marker: str, number: bytes, found: set[str],
                     timeout: float, page: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                topic, payload, retain = await client.message()
                if topic == marker:
                    if payload == number:
                        return
                elif retain and payload:
                    found.add(topic)
    except TimeoutError:
        raise InventoryError(f"the retained messages under {page} did not all arrive within "
                             f"{timeout:g}s (the broker may have dropped some)") from None
