"""The one owner of clearing retained topics on the local broker that nothing live stands
behind: the topics of a device deleted in flespi, and leftovers of earlier runs (devices no
longer selected or gone, entities no longer generated).

Leftovers are found by an inventory of retained topics taken after every local connect, and
cleared only once the upstream state is positively known in full (`loaded`, set by the
start-up marker): before that, a device not yet replayed would look gone, and clearing its
discovery configs would make Home Assistant delete live entities. (Entities a live device
stops having are removed by `discovery.Discovery`, which compares with what it published.)

Configs in the other discovery layout (an earlier run with the other
`homeassistant.discovery_mode`) are not cleared here when a live device stands behind them:
they are handed to `Discovery`, which migrates them with Home Assistant's `migrate_discovery`
protocol. Until the inventory says whether there is anything to migrate (and, if there is,
until the upstream state is loaded), discovery is held back.

Until the upstream state is loaded, a device is announced once it has telemetry (see
`Renderer.complete`); the devices still unannounced then are announced when it is, or after
`DISCOVERY_HOLD` seconds were the start-up marker never to come back.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.core.events import (
    DeviceRemoved,
    DiscoveryReleased,
    EventHub,
    LocalConnected,
    StateComplete,
)
from bridge.core.outbox import Outbox
from bridge.core.store import Device, Store
from bridge.core.transport import Publication
from bridge.exceptions import LocalUnavailableError
from bridge.publish.local_broker import LocalBroker
from bridge.publish.renderer import Renderer

log = logging.getLogger(__name__)
# Seconds between clearing a deleted device's discovery configs and its state topics.
TOPICS_DELAY = 5.0
# Seconds devices without telemetry wait for the upstream state before being announced.
DISCOVERY_HOLD = 60.0


class Cleanup:
    """Reacts to `LocalConnected` and `DeviceRemoved` (subscribed in `start()`, before the
    republisher: on a connect, discovery is held back before everything is marked); says
    `DiscoveryReleased` and `StateComplete` on the event hub."""

    def __init__(self, store: Store, renderer: Renderer, outbox: Outbox, local: LocalBroker,
                 loaded: asyncio.Event, events: EventHub) -> None:
        self.settings = renderer.settings.homeassistant
        self.store = store
        self.renderer = renderer
        self.outbox = outbox
        self.local = local
        self.loaded = loaded
        self.events = events
        self.discovery_hold = DISCOVERY_HOLD
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.events.subscribe(LocalConnected, lambda _: self.on_local_connect())
        self.events.subscribe(DeviceRemoved, lambda event: self.device_removed(event.device))

    async def stop(self) -> None:
        self._cancel()

    def device_removed(self, dev: Device) -> None:
        """A device deleted in flespi: its discovery configs are cleared at once, its state
        topics `TOPICS_DELAY` seconds later. Home Assistant removes an entity a moment after
        its empty config; a state topic cleared before that reaches the entity's template as
        an empty payload and fills Home Assistant's log with errors. (Were the bridge to stop
        meanwhile, the next start's inventory finds and clears them.)"""
        self.outbox.add(self.renderer.clear_discovery(dev))
        topics = self.renderer.clear_topics(dev)
        if not self.settings.discovery:
            self.outbox.add(topics)
            return
        asyncio.get_running_loop().call_later(TOPICS_DELAY, self._clear_topics, dev.id, topics)

    def _clear_topics(self, device_id: int, topics: list[Publication]) -> None:
        if device_id not in self.store.devices:  # not back meanwhile: nothing live behind them
            self.outbox.add(topics)

    def on_local_connect(self) -> None:
        """Take stock of the retained topics now on the broker; clear the stale ones once
        the upstream state is loaded. A reconnect starts over."""
        self._cancel()
        if self.settings.discovery:
            self.renderer.discovery.hold()
        self._task = asyncio.create_task(self._run(), name="cleanup")

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _filters(self) -> list[str]:
        filters = [f"{self.renderer.topics.base}/+/+"]
        if self.settings.discovery:
            filters.append(self.renderer.ha.config_filter)
        return filters

    async def _run(self) -> None:
        discovery = self.renderer.discovery
        try:
            inventory = await self.local.retained(self._filters())
        except (LocalUnavailableError, TimeoutError) as exc:
            log.warning("could not list retained topics on the local broker: %s", exc)
            self._release({})
            await self._until_loaded()
            return
        legacy = self.legacy(inventory)
        if not legacy:
            self._release({})
        elif discovery.held:
            log.info("discovery configs of the other layout found for %d devices: "
                     "migrating them once the upstream state is loaded", len(legacy))
        await self._until_loaded()
        live = self.live_owners()
        if legacy:
            self._release({o: t for o, t in legacy.items() if o in live})
        stale = self.stale(inventory)
        if stale:
            log.info("clearing %d stale retained topics from an earlier run", len(stale))
            self.outbox.add(Publication(topic, b"") for topic in stale)

    async def _until_loaded(self) -> None:
        """Wait for the upstream state; then devices without telemetry are announced too
        (also after `discovery_hold` seconds without it)."""
        if not self.loaded.is_set():
            try:
                await asyncio.wait_for(self.loaded.wait(), self.discovery_hold)
            except TimeoutError:
                log.warning("the upstream state is not loaded after %ss: announcing the "
                            "devices without telemetry too", self.discovery_hold)
                self._complete()
        await self.loaded.wait()
        self._complete()

    def _complete(self) -> None:
        if not self.renderer.complete:
            self.renderer.complete = True
            self.events.emit(StateComplete())

    def _release(self, legacy: dict[str, list[str]]) -> None:
        discovery = self.renderer.discovery
        if discovery.held:
            discovery.release(legacy)
            self.events.emit(DiscoveryReleased())

    def legacy(self, inventory: set[str]) -> dict[str, list[str]]:
        """Owner -> its retained configs in the layout not in use, sorted."""
        ha = self.renderer.ha
        out: dict[str, list[str]] = {}
        for topic in sorted(inventory):
            parsed = ha.owner(topic)
            if parsed is not None and parsed[1] != ha.mode:
                out.setdefault(parsed[0], []).append(topic)
        return out

    def live_owners(self) -> set[str]:
        if not self.settings.discovery:
            return set()
        live = {self.renderer.ha.bridge_identifier}
        live.update(f"flespi_{d.id}" for d in self.store.devices.values()
                    if self.renderer.announces(d))
        return live

    def stale(self, inventory: set[str]) -> list[str]:
        """Topics of `inventory` that nothing live stands behind, sorted."""
        renderer = self.renderer
        ha = renderer.ha
        configs = [t for t in inventory if t.startswith(ha.prefix + "/")
                   and renderer.topics.parse_device(t) is None]
        live: set[str] = set()
        if configs:  # (a fresh broker has none: no need to list a large fleet's)
            if self.settings.discovery:
                live.update(renderer.bridge_configs())
            for dev in self.store.devices.values():
                if self.settings.announces(dev.id):
                    live.update(renderer.config_topics(dev))
        owners = self.live_owners()
        stale = []
        for topic in inventory:
            parsed = renderer.topics.parse_device(topic)
            if parsed is not None:
                if parsed[0] not in self.store.devices:
                    stale.append(topic)  # a device that is gone or no longer selected
                continue
            if not topic.startswith(ha.prefix + "/") or topic in live:
                continue
            owner = ha.owner(topic)
            if owner is not None and owner[1] != ha.mode and owner[0] in owners:
                continue  # the other layout of a live device: Discovery migrates it
            stale.append(topic)  # an entity no longer generated
        return sorted(stale)
