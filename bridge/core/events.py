"""The event hub: the cold path between parts that must not know each other.

Parts announce what happened (`LocalConnected`, `DeviceRemoved`, ...) with `emit`; parts that
care `subscribe` to the type in their `start()`. Why a hub and not references: whoever builds
the bridge would otherwise hand part A a lambda that calls part B before B exists, or set
callbacks after construction. Why only the cold path: a handler lookup and a loop per event
is nothing once per connect or per deleted device, and too much once per upstream message,
which goes ingest -> store -> publisher by direct calls.

Invariants:
- Handlers are synchronous and run in the order they subscribed (the order parts start in):
  a handler that must wait starts a task of its own. Every reaction wired through here was a
  plain call before, so none of them awaits anything.
- A handler that raises is logged and the others still run: one part's bug does not take
  away another part's reaction, nor the emitter's loop.
- Dispatch is on the exact type: events do not inherit from each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bridge.core.store import Device

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalConnected:
    """The connection to the local broker is up (again); `connects` counts them, from 1.
    A broker may have lost every retained message: what it holds must be published again."""

    connects: int


@dataclass(frozen=True, slots=True)
class HomeAssistantOnline:
    """Home Assistant said `online` on its status topic (not a retained replay): it
    restarted and has forgotten the discovery configs."""


@dataclass(frozen=True, slots=True)
class DeviceRemoved:
    """A device was deleted in flespi and has left the store."""

    device: Device


@dataclass(frozen=True, slots=True)
class NamesLearned:
    """flespi's name of a device type or protocol (`what`) is known now."""

    what: str  # "device_type" | "protocol"
    id: int


@dataclass(frozen=True, slots=True)
class DiscoveryReleased:
    """Discovery, held back after a local connect until the inventory of retained topics
    was known, may go out again: every device is to be announced."""


@dataclass(frozen=True, slots=True)
class StateComplete:
    """The upstream state is known in full (or waited for long enough): the devices still
    unannounced, those without telemetry, are to be announced too."""


@dataclass(frozen=True, slots=True)
class DevicesGained:
    """This replica of a split fleet publishes these devices from now on (another replica
    did, or none): each is to be published in full (`bridge.publish.lease`)."""

    devices: tuple[Device, ...]


@dataclass(frozen=True, slots=True)
class ReplicaRetired:
    """Shard 0 of a split fleet cleared the local topics of replica `shard`, whose shard no
    longer exists and which is offline: its persistent session on flespi is to end too."""

    shard: int


E = TypeVar("E")


class EventHub:
    def __init__(self) -> None:
        self._handlers: dict[type[Any], list[Callable[[Any], None]]] = {}

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        """Call `handler` with every `kind` event emitted from now on."""
        self._handlers.setdefault(kind, []).append(handler)

    def emit(self, event: object) -> None:
        """Hand `event` to each of its type's handlers, in the order they subscribed."""
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                log.exception("a handler of %s failed", type(event).__name__)
