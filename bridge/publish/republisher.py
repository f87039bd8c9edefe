"""The one owner of full republishes: everything a subscriber needs is published again after
every connect to the local broker (a broker restarted without persistence has lost every
retained message) and when Home Assistant says `online` on `<prefix>/status` (it restarted
and forgot the discovery configs).

A retained `online` on the status topic is ignored (`bridge.homeassistant.status`): the
broker replays it on every subscription, and it says nothing new — the connect that caused
the replay already republishes everything. Any local client may publish `online`, so what
it starts is bounded: `online`s coalesce into one pending republish, and republishes for
`online` are at least `homeassistant.republish_interval` seconds apart (one arriving sooner
waits for the interval's end: Home Assistant restarting twice in a row is still answered).

Everything here reacts to events on the hub (`bridge.core.events`), subscribed in `start()`:
`LocalConnected` (after `Cleanup`'s handler, which holds discovery back first: it starts
first), `HomeAssistantOnline`, `NamesLearned`, `Cleanup`'s `DiscoveryReleased` and
`StateComplete`, and the lease's `DevicesGained` (a split fleet).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from bridge.config.sections import HomeAssistantSettings
from bridge.core.events import (
    DevicesGained,
    DiscoveryReleased,
    EventHub,
    HomeAssistantOnline,
    LocalConnected,
    NamesLearned,
    StateComplete,
)
from bridge.core.outbox import Outlet
from bridge.core.store import ALL, DISCOVERY, Store
from bridge.homeassistant.payloads import device_owner
from bridge.publish.renderer import Renderer

log = logging.getLogger(__name__)


class Republisher:
    def __init__(self, store: Store, renderer: Renderer, publisher: Outlet, events: EventHub,
                 *, settings: HomeAssistantSettings,
                 delay: Callable[[float, float], float] = random.uniform) -> None:
        self.store = store
        self.renderer = renderer
        self.outbox = publisher.outbox
        self._wake = publisher.wake
        self.events = events
        self.discovery = settings.discovery
        self.status_delay = settings.status_delay
        self.interval = settings.republish_interval
        self._delay = delay
        self._task: asyncio.Task[None] | None = None
        self._last: float | None = None  # when the latest republish for `online` ran

    async def start(self) -> None:
        on = self.events.subscribe
        on(LocalConnected, lambda _: self.everything())
        on(HomeAssistantOnline, lambda _: self.online())
        on(NamesLearned, self.names_learned)
        on(DiscoveryReleased, lambda _: self.discovery_only())
        on(StateComplete, lambda _: self.discovery_owed())
        on(DevicesGained, self.gained)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def everything(self) -> None:
        self.renderer.reset()
        self.store.mark_all()
        if self.discovery:
            self.outbox.add(self.renderer.bridge_publications())
        self._wake()

    def gained(self, event: DevicesGained) -> None:
        """Devices this replica of a split fleet publishes from now on: all of each, as
        nothing of it can be assumed published by us (`bridge.publish.lease`)."""
        for dev in event.devices:
            self.renderer.forget(dev)
            self.store.mark(dev, ALL)
        self._wake()

    def discovery_only(self) -> None:
        """Announce every device again (discovery was held back, see bridge.publish.cleanup)."""
        if self.discovery:
            self.outbox.add(self.renderer.bridge_publications())
            self.store.mark_all(DISCOVERY)
            self._wake()

    def discovery_owed(self) -> None:
        """Announce the devices not announced yet (held back until the upstream state was
        complete, see `Renderer.complete`)."""
        if self.discovery:
            published = self.renderer.discovery.has_published
            for dev in self.store.devices.values():
                if not published(device_owner(dev.id)):
                    self.store.mark(dev, DISCOVERY)
            self._wake()

    def names_learned(self, event: NamesLearned) -> None:
        """flespi's name of a device type or protocol is known: its devices are announced
        again with it."""
        for dev in self.store.devices.values():
            info = dev.info
            if (info.device_type_id if event.what == "device_type" else info.protocol_id) \
                    == event.id:
                self.store.mark(dev, DISCOVERY)
        self._wake()

    def online(self) -> None:
        """Home Assistant is back: republish after a random delay (many bridges answering at
        once would flood it), and no sooner than `republish_interval` after the previous one;
        while one is pending, another `online` changes nothing."""
        if self._task is not None and not self._task.done():
            return
        wait = self._delay(self.status_delay / 2, self.status_delay)
        if self._last is not None:
            wait = max(wait, self._last + self.interval - time.monotonic())
        self._task = asyncio.create_task(self._later(wait), name="republish")

    async def _later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._last = time.monotonic()
        log.info("Home Assistant is online: republishing discovery and states")
        self.everything()
