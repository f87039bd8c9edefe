"""The local side's seam: what the bridge needs from a connection to the local broker.

`bridge.publish.local_broker.LocalBroker` implements it (on `bridge.mqtt.client`); the tests
implement it in memory to drive the publisher and the ack ledger through every interleaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Publication(NamedTuple):
    topic: str
    payload: bytes
    retain: bool = True


_KINDS = frozenset(("state", "availability", "info", "message", "config", "result",
                    "last_command", "connections"))


def publication_kind(topic: str) -> str:
    """Metric label of a local publication: the last topic level, `config` for discovery."""
    leaf = topic[topic.rfind("/") + 1:]
    return leaf if leaf in _KINDS else "attribute"


class LocalTransport(Protocol):
    @property
    def connected(self) -> asyncio.Event:
        """Set while the broker is connected."""
        ...

    def publish_nowait(self, publications: Sequence[Publication]) -> asyncio.Future[None]:
        """Hand publications to the broker at once. The future completes when the broker has
        acknowledged every one of them and fails with LocalUnavailableError if the
        connection is lost first; LocalUnavailableError is raised at once when not
        connected. Batches complete in the order they were handed over."""
        ...

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish one message and wait for its acknowledgement (LocalUnavailableError)."""
        ...
