"""The one owner of clearing retained topics on the local broker that nothing live stands
behind: the topics of a device deleted in flespi, and leftovers of earlier runs (devices no
longer selected or gone, entities no longer generated).

Leftovers are found by an inventory of retained topics taken after every local connect
(`bridge.publish.inventory`: complete on a stock broker, every depth of device topic and
both discovery layouts), and cleared only once the upstream state is positively known in
full (`loaded`, set by the start-up marker): before that, a device not yet replayed would
look gone, and clearing its discovery configs would make Home Assistant delete live
entities. (Entities a live device stops having are removed by `discovery.Discovery`, which
compares with what it published.)

Configs in the other discovery layout (an earlier run with the other
`homeassistant.discovery_mode`) are not cleared here when a live device stands behind them:
they are handed to `Discovery`, which migrates them with Home Assistant's `migrate_discovery`
protocol. Until the inventory says whether there is anything to migrate (and, if there is,
until the upstream state is loaded), discovery is held back. An inventory that fails (the
connection, or a page that does not arrive whole) is retried with a growing delay, discovery
still held: announcing without it would lose the `migrate_discovery` markers and clear
nothing. Only a broker that refuses the inventory's subscriptions (an ACL) lets discovery go
ahead without it.

Until the upstream state is loaded, a device is announced once it has telemetry (see
`Renderer.complete`); the devices still unannounced then are announced when it is, or after
`DISCOVERY_HOLD` seconds were the start-up marker never to come back.

With a split fleet (the local broker's `lease`, `bridge.publish.lease`) a replica clears only
what cannot be another's: the topics of a device that is its own by hash and not in the fleet
(`Fleet.ids`: gone, or not selected), the entities no longer generated of a device it
publishes now, a deleted device's topics only if it published the device; and shard 0 the
bridge topics of replicas whose shard no longer exists and that are not online. Everything
else (another replica's devices, a device another shard may still own during a resize, other
replicas' bridge topics) is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import re

from bridge.core.events import (
    DeviceRemoved,
    DiscoveryReleased,
    EventHub,
    LocalConnected,
    ReplicaRetired,
    StateComplete,
)
from bridge.core.outbox import Outbox
from bridge.core.store import Device, Store
from bridge.core.transport import Publication
from bridge.exceptions import LocalUnavailableError
from bridge.publish.inventory import PAGE_TIMEOUT, SubscriptionRefused
from bridge.publish.local_broker import LocalBroker
from bridge.publish.renderer import Renderer

log = logging.getLogger(__name__)
# Seconds between clearing a deleted device's discovery configs and its state topics.
TOPICS_DELAY = 5.0
# Seconds devices without telemetry wait for the upstream state before being announced.
DISCOVERY_HOLD = 60.0
# Seconds between attempts at an inventory that failed (doubling up to RETRY_MAX).
RETRY_MIN = 2.0
RETRY_MAX = 60.0


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
        self.page_timeout = PAGE_TIMEOUT
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
        meanwhile, the next start's inventory finds and clears them.) With a split fleet,
        only the replica that published it clears it."""
        lease = self.local.lease
        if lease is not None and not lease.owns(dev.id):
            return
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

    def pages(self) -> list[str]:
        """The inventory's filters, one page each: every depth of device topic the bridge
        publishes (`<base>/<id>/<leaf>`, and a lock's or setting's `<base>/<id>/<key>/state`)
        and, with discovery, both layouts' configs."""
        base = self.renderer.topics.base
        pages = [f"{base}/+/+", f"{base}/+/+/+"]
        if self.settings.discovery:
            pages.append(self.renderer.ha.config_filter)
        return pages

    async def _inventory(self) -> set[str] | None:
        """The retained topics, retried with a growing delay until the inventory is
        complete (discovery stays held meanwhile: announcing before it would lose the
        `migrate_discovery` markers). None when the broker refuses a page's subscription
        (an ACL): nothing can be cleared or migrated then, and discovery goes ahead."""
        delay = RETRY_MIN
        while True:
            try:
                return await self.local.retained(self.pages(), page_timeout=self.page_timeout)
            except SubscriptionRefused as exc:
                log.warning("could not list retained topics on the local broker (%s): stale "
                            "topics are not cleared and discovery configs of the other "
                            "layout are not migrated", exc)
                return None
            except LocalUnavailableError as exc:
                log.warning("could not list retained topics on the local broker: %s; "
                            "cleanup and discovery wait, retrying in %.0fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _run(self) -> None:
        discovery = self.renderer.discovery
        inventory = await self._inventory()
        if inventory is None:
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
        for shard in self.retired_replicas(stale):
            self.events.emit(ReplicaRetired(shard))

    def retired_replicas(self, stale: list[str]) -> list[int]:
        """The replicas whose leases are among the `stale` topics (only shard 0 clears a
        retired replica's lease, see `_foreign`)."""
        return [replica for replica, leaf in map(self._replica_topic, stale)
                if replica is not None and leaf == "lease"]

    def _replica_topic(self, topic: str) -> tuple[int | None, str]:
        """`<base>/bridge/<k>/<leaf>` -> (k, leaf); (None, rest) for any other topic
        (`<base>/bridge/state`: (None, "state"))."""
        rest = topic.removeprefix(self.renderer.topics.bridge_topic(None, ""))
        level, _, leaf = rest.partition("/")
        return (int(level), leaf) if leaf and level.isdigit() else (None, rest)

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

    def _gone(self, device_id: int) -> bool:
        """Whether a device the store does not hold is this bridge's to clear: always for a
        single bridge; with a split fleet, only one of its own by hash that the fleet does not
        have (one in the fleet is another replica's, or will be ours once replayed)."""
        lease = self.local.lease
        return lease is None or (lease.mine(device_id) and device_id not in lease.fleet.ids)

    def _foreign(self, topic: str) -> bool:
        """Whether a topic under the discovery prefix or the bridge's is another replica's
        business (a split fleet): a device it does not publish now or that may be another's,
        another replica's bridge topics or device (but a retired one's, for shard 0)."""
        lease = self.local.lease
        if lease is None:
            return False
        ha = self.renderer.ha
        owner = ha.owner(topic)
        if owner is not None:
            if owner[0] == ha.bridge_identifier:
                return False
            device_id = int(owner[0].removeprefix("flespi_"))
            if device_id in self.store.devices:
                return not lease.owns(device_id)
            return not self._gone(device_id)
        if topic.startswith(ha.prefix + "/"):  # another replica's (or one bridge's) device
            bridge = re.search(rf"/flespi_bridge_{re.escape(ha.node)}(?:_shard_(\d+))?"
                               r"(?:_[A-Za-z0-9]+)?/config$", topic)
            return bridge is None or not lease.retired(
                None if bridge.group(1) is None else int(bridge.group(1)))
        # `<base>/bridge/<k>/lease|state`, or one bridge's `<base>/bridge/state`
        replica, leaf = self._replica_topic(topic)
        if replica is None:
            return leaf != "state" or not lease.retired(None)
        return not (leaf in ("lease", "state") and lease.retired(replica))

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
                if parsed[0] not in self.store.devices and self._gone(parsed[0]):
                    stale.append(topic)  # a device that is gone or no longer selected
                continue
            if self._foreign(topic):
                continue
            if not topic.startswith(ha.prefix + "/"):
                if self.local.lease is not None:
                    stale.append(topic)  # a retired replica's bridge topics (`_foreign`)
                continue
            if topic in live:
                continue
            owner = ha.owner(topic)
            if owner is not None and owner[1] != ha.mode and owner[0] in owners:
                continue  # the other layout of a live device: Discovery migrates it
            stale.append(topic)  # an entity no longer generated
        return sorted(stale)
