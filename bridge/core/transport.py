"""The local side's seam: what the bridge needs from a connection to the local broker.

`bridge.publish.local_broker.LocalBroker` implements it (on `bridge.mqtt.client`); the tests
implement it in memory to drive the publisher and the ack ledger through every interleaving.

Messages from the local broker go to whoever routed their topic filter (`LocalLink.route`,
dispatched by `Routes`): the command handler takes its command topics, Home Assistant's
status listener its status topic. The link subscribes to exactly the filters routed.
`Intake` is what the HTTP stream needs of the publisher: whether it can take a batch now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol


class Publication(NamedTuple):
    topic: str
    payload: bytes
    retain: bool = True


_KINDS = frozenset(("state", "availability", "info", "message", "config", "result",
                    "last_command", "connections", "event"))


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


# A message from the local broker: topic, payload, retain flag.
Handler = Callable[[str, bytes, bool], None]


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (`+` one level, `#` the rest); wildcards at the first level
    never match a `$` topic."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels, wanted = topic.split("/"), topic_filter.split("/")
    for i, want in enumerate(wanted):
        if want == "#":
            return True
        if i >= len(levels) or (want != "+" and want != levels[i]):
            return False
    return len(wanted) == len(levels)


class Routes:
    """Topic filter -> handler. A message goes to every handler whose filter matches it, in
    the order routed; a message no filter matches is ignored. Handlers run synchronously in
    the connection's loop (what has to wait spawns a task), and an error in one propagates:
    it is a bug, and the local connection's task ending makes it visible (`/healthz`)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, Handler]] = []

    def add(self, topic_filter: str, handler: Handler) -> None:
        self._routes.append((topic_filter, handler))

    @property
    def filters(self) -> list[str]:
        """What to subscribe to, each filter once, in the order routed."""
        return list(dict.fromkeys(f for f, _ in self._routes))

    def dispatch(self, topic: str, payload: bytes, retain: bool) -> None:
        for topic_filter, handler in self._routes:
            if matches(topic_filter, topic):
                handler(topic, payload, retain)


class LocalLink(LocalTransport, Protocol):
    def route(self, topic_filter: str, handler: Handler) -> None:
        """Subscribe to `topic_filter` (on every connect) and hand its messages to `handler`.
        Called before the connection starts."""
        ...

    def answers(self, device_id: int | None) -> bool:
        """Whether this bridge executes and answers a command for `device_id` (None: a
        topic level that is no device id). Always, for a single bridge; with a split fleet
        only the device's owner, and shard 0 for an id no shard has."""
        ...


class Intake(Protocol):
    """What the HTTP stream needs of the publisher."""

    def accepting(self) -> str | None:
        """Why a batch cannot be taken now (answered 503), or None."""
        ...

    def hurry(self) -> None:
        """Publish what is dirty at once: a batch waits for its answer."""
        ...
