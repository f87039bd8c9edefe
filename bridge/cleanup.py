"""The one owner of clearing retained topics on the local broker that nothing live stands
behind: the topics of a device deleted in flespi, and leftovers of earlier runs (devices no
longer selected or gone, entities no longer generated).

Leftovers are found by an inventory of retained topics taken after every local connect, and
cleared only once the upstream state is positively known in full (`loaded`, set by the
start-up marker): before that, a device not yet replayed would look gone, and clearing its
discovery configs would make Home Assistant delete live entities. (Entities a live device
stops having are cleared by `homeassistant.Discovery`, which compares with what it published.)
"""

from __future__ import annotations

import asyncio
import logging

import aiomqtt

from bridge.config import Settings
from bridge.local import LocalBroker
from bridge.outbox import Outbox
from bridge.render import Renderer
from bridge.state import Device, Store
from bridge.transport import Publication

log = logging.getLogger(__name__)


class Cleanup:
    def __init__(self, settings: Settings, store: Store, renderer: Renderer, outbox: Outbox,
                 local: LocalBroker, loaded: asyncio.Event) -> None:
        self.settings = settings
        self.store = store
        self.renderer = renderer
        self.outbox = outbox
        self.local = local
        self.loaded = loaded
        self._task: asyncio.Task[None] | None = None

    def device_removed(self, dev: Device) -> None:
        self.outbox.add(self.renderer.clear(dev))

    def on_local_connect(self) -> None:
        """Take stock of the retained topics now on the broker; clear the stale ones once
        the upstream state is loaded. A reconnect starts over."""
        self.stop()
        self._task = asyncio.create_task(self._run(), name="cleanup")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _filters(self) -> list[str]:
        filters = [f"{self.renderer.topics.base}/+/+"]
        if self.settings.homeassistant.discovery:
            filters.append(self.renderer.ha.config_filter)
        return filters

    async def _run(self) -> None:
        try:
            inventory = await self.local.retained(self._filters())
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not list retained topics on the local broker: %s", exc)
            return
        await self.loaded.wait()
        stale = self.stale(inventory)
        if stale:
            log.info("clearing %d stale retained topics from an earlier run", len(stale))
            self.outbox.add(Publication(topic, b"") for topic in stale)

    def stale(self, inventory: set[str]) -> list[str]:
        """Topics of `inventory` that nothing live stands behind, sorted."""
        renderer = self.renderer
        live: set[str] = set()
        if self.settings.homeassistant.discovery:
            live.update(renderer.bridge_configs())
        for dev in self.store.devices.values():
            if self.settings.homeassistant.announces(dev.id):
                live.update(renderer.device_configs(dev))
        stale = []
        for topic in inventory:
            parsed = renderer.topics.parse_device(topic)
            if parsed is not None:
                if parsed[0] not in self.store.devices:
                    stale.append(topic)  # a device that is gone or no longer selected
            elif topic.startswith(renderer.ha.prefix + "/") and topic not in live:
                stale.append(topic)  # an entity no longer generated
        return sorted(stale)
