"""What a device looks like on the local broker: its retained topics, built from the store.

`Renderer.render(dev, flags)` turns a dirty device into publications (state, info,
availability, per-attribute topics, discovery configs); `clear_discovery(dev)` and
`clear_topics(dev)` list what a removed device leaves behind. Pure but for two memories that
save republishing what did not change: the discovery configs published (`Discovery`) and
each device's `sent` attributes.

A string attribute longer than `local.max_string_length` bytes is left out of the state and
of its own topic (counted in `dropped["too_long"]`, logged once per device and attribute):
one catalogue string must not make a device's whole state too large for the broker (which
drops the connection, or over MQTT 3.1.1 may acknowledge and discard it unseen).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from bridge.config.profiles import CommandSpec
from bridge.config.settings import Settings
from bridge.core.store import (
    AVAILABILITY,
    CONNECTIONS,
    DISCOVERY,
    INFO,
    SETTINGS,
    STATE,
    Device,
    Names,
    connections_document,
)
from bridge.core.topics import LocalTopics
from bridge.core.transport import Publication
from bridge.homeassistant.discovery import Discovery
from bridge.homeassistant.events import EVENT_LEAF, event_payload
from bridge.homeassistant.payloads import (
    LAST_COMMAND,
    Context,
    bridge_configs,
    device_configs,
    device_owner,
    lock_state,
    setting_state,
    tracker_position,
)
from bridge.homeassistant.templates import DiscoveryTemplates
from bridge.normalize.catalog import Attribute

log = logging.getLogger(__name__)

_UNSENT = object()
# (device, attribute) pairs remembered so that each too long string is logged once (then
# the memory starts over)
LOGGED_TOO_LONG = 10_000
# Publication(topic, payload, retain) without the NamedTuple's Python-level __new__: once
# per device state, on the hot path.
_publication = partial(tuple.__new__, Publication)


class Renderer:
    def __init__(self, settings: Settings, attributes: dict[str, Attribute],
                 names: Callable[[int | None, int | None], Names] | None = None,
                 dropped: Counter[str] | None = None) -> None:
        """`dropped`: where strings left out for their length are counted (the metrics'
        `Stats.dropped`)."""
        self.settings = settings
        self.attributes = attributes
        # flespi's names of a device type and protocol (bridge.flespi.device_types)
        self.names = names
        loc = settings.local
        place = settings.cluster.place
        replica = None if place.single else place.index
        self.topics = LocalTopics(loc.base_topic, replica)
        self._output = loc.output
        self._max_string = loc.max_string_length or None
        self._dropped: Counter[str] = Counter() if dropped is None else dropped
        self._too_long: set[tuple[int, str]] = set()
        # device type -> its profile's locks shown from telemetry (profiles never change)
        self._lock_specs: dict[int | None, list[tuple[str, CommandSpec]]] = {}
        ha = settings.homeassistant
        self.ha = Context(loc.discovery_prefix, loc.base_topic, loc.output, ha.expire_after,
                          ha.discovery_mode, replica)
        self.discovery = Discovery(self.ha)
        self.templates = DiscoveryTemplates(self.device_configs, self._names)
        # Set (by `Cleanup`) once the upstream state is known in full. Until then a device
        # is announced once it has telemetry: flespi replays every device's object and
        # `connected` before any telemetry, and an announcement without the sensors would
        # be published again moments later.
        self.complete = False
        # events stamped before the bridge started are flespi's replay, not news; then the
        # stamp of the newest event published per (device, attribute). Not in `Device.sent`,
        # which a local reconnect clears: an event must not fire twice.
        self._since = time.time()
        self._event_attrs: tuple[int, list[str]] = (-1, [])
        self._event_stamps: dict[tuple[int, str], float] = {}

    def _names(self, dev: Device) -> Names | None:
        return self.names(dev.info.device_type_id, dev.info.protocol_id) if self.names \
            else None

    def device_configs(self, dev: Device) -> dict[str, dict[str, Any]]:
        """Discovery config topic -> payload of the device's entities now."""
        profile = self.settings.commands.profile(dev.info.device_type_id)
        return device_configs(self.ha, dev, self.attributes, profile, self._names(dev))

    def config_topics(self, dev: Device) -> list[str]:
        """The discovery config topics of the device's entities now (from the templates:
        a large fleet's are listed in a moment)."""
        configs, _ = self.templates.render(dev)
        return list(configs)

    def bridge_configs(self) -> dict[str, dict[str, Any]]:
        """Discovery config topic -> payload of the bridge's own entities."""
        return bridge_configs(self.ha)

    def bridge_publications(self) -> list[Publication]:
        return self.discovery.update(self.ha.bridge_identifier, self.bridge_configs(),
                                     force=True)

    def announces(self, dev: Device) -> bool:
        return self.settings.homeassistant.announces(dev.id) and (
            bool(dev.values) or (dev.online is not None and self.complete))

    def render(self, dev: Device, flags: int) -> list[Publication]:
        if flags == STATE:
            return self._state(dev, [])
        pubs: list[Publication] = []
        t = self.topics
        # while discovery is held its flag is dropped: the release marks every device again
        if flags & DISCOVERY and not self.discovery.held and self.announces(dev):
            pubs.extend(self._discovery(dev))
        if flags & INFO:
            pubs.append(Publication(t.info(dev.id), orjson.dumps(dev.info.as_dict(dev.id))))
        if flags & AVAILABILITY and dev.online is not None:
            pubs.append(Publication(t.availability(dev.id),
                                    b"online" if dev.online else b"offline"))
        if flags & CONNECTIONS and dev.connections is not None:
            pubs.append(Publication(t.connections(dev.id),
                                    orjson.dumps(connections_document(dev))))
        if flags & STATE:
            self._state(dev, pubs)
        if flags & SETTINGS:
            pubs.extend(self._settings(dev))
        return pubs

    def _state(self, dev: Device, pubs: list[Publication]) -> list[Publication]:
        """The state, per-attribute topics and locks: what new values change (the hot path:
        once per device and flush)."""
        if dev.values or dev.last_seen is not None:
            output = self._output
            if output != "attribute":
                state = orjson.dumps(dev.state())
                limit = self._max_string
                if limit is not None and len(state) > limit:  # else no string can be over
                    state = orjson.dumps({k: v for k, v in dev.state().items()
                                          if not self._too_long_string(dev, k, v)})
                pubs.append(_publication((self.topics.state(dev.id), state, True)))
            if output != "json":
                pubs.extend(self._attributes(dev))
        locks = self._lock_specs.get(dev.info.device_type_id)
        if locks is None:
            locks = self._lock_specs[dev.info.device_type_id] = [
                (key, spec) for key, spec
                in self.settings.commands.profile(dev.info.device_type_id).items()
                if spec.component == "lock" and spec.state_attribute is not None]
        if locks:
            pubs.extend(self._locks(dev, locks))
        events = self._event_names()
        if events:
            pubs.extend(self._events(dev, events))
        return pubs

    def _event_names(self) -> list[str]:
        """The attributes whose values are events (the table grows with rule-made rows)."""
        known, names = self._event_attrs
        if known != len(self.attributes):
            names = [n for n, a in self.attributes.items() if a.events]
            self._event_attrs = (len(self.attributes), names)
        return names

    def _events(self, dev: Device, names: list[str]) -> list[Publication]:
        """`<base>/<id>/<attribute>/event` (not retained) for each event value reported
        since the last one published, or since the bridge started."""
        pubs = []
        for name in names:
            stamp = dev.stamps.get(name)
            if stamp is None or name not in dev.values:
                continue
            if stamp <= self._event_stamps.get((dev.id, name), self._since):
                continue
            self._event_stamps[dev.id, name] = stamp
            payload = event_payload(self.attributes[name], dev.values[name], stamp)
            if payload is not None:
                pubs.append(Publication(self.topics.device(dev.id, f"{name}/{EVENT_LEAF}"),
                                        payload, False))
        return pubs

    def _settings(self, dev: Device) -> list[Publication]:
        """`<base>/<id>/<key>/state` of each number showing a device setting, when it
        changed since last published; `None` (Home Assistant's unknown) once flespi has
        removed a setting that was shown."""
        pubs = []
        for key, spec in self.settings.commands.profile(dev.info.device_type_id).items():
            if spec.setting is None:
                continue
            leaf = f"{key}/state"
            shown = setting_state(dev, spec)
            if shown is None:
                if leaf not in dev.sent:
                    continue
                shown = b"None"
            if dev.sent.get(leaf) != shown:
                dev.sent[leaf] = shown
                pubs.append(Publication(self.topics.device(dev.id, leaf), shown))
        return pubs

    def _discovery(self, dev: Device) -> list[Publication]:
        owner = device_owner(dev.id)
        if self.discovery.announced(owner):  # removals may be owed: render in full
            return self.discovery.update(owner, self.device_configs(dev))
        configs, serialized = self.templates.render(dev)  # a first announcement: fast
        return self.discovery.update(owner, configs, serialized=serialized)

    def _locks(self, dev: Device, locks: list[tuple[str, CommandSpec]]) -> list[Publication]:
        """Each lock's `<base>/<id>/<key>/state` (telemetry, or a command in flight), when
        it changed since last published."""
        pubs = []
        for key, spec in locks:
            shown = lock_state(dev, key, spec)
            leaf = f"{key}/state"
            if shown is not None and dev.sent.get(leaf) != shown:
                dev.sent[leaf] = shown
                pubs.append(Publication(self.topics.device(dev.id, leaf), shown.encode()))
        return pubs

    def _attributes(self, dev: Device) -> list[Publication]:
        """Per-attribute topics, only for values that changed since last published."""
        pubs = []
        limit = self._max_string
        for name, value in dev.state().items():
            if dev.sent.get(name, _UNSENT) != value:
                data = value.encode() if isinstance(value, str) else orjson.dumps(value)
                if limit is not None and len(data) > limit \
                        and self._too_long_string(dev, name, value):
                    continue
                dev.sent[name] = value
                pubs.append(Publication(self.topics.device(dev.id, name), data))
        if "latitude" in dev.values and "position" not in dev.values:
            pos = orjson.dumps(tracker_position(dev))
            if dev.sent.get("position") != pos:
                dev.sent["position"] = pos
                pubs.append(Publication(self.topics.device(dev.id, "position"), pos))
        return pubs

    def _too_long_string(self, dev: Device, name: str, value: object) -> bool:
        """Whether `value` is a string over the limit: then counted, and logged once per
        device and attribute."""
        limit = self._max_string
        if limit is None or not isinstance(value, str) or len(value) * 4 <= limit \
                or len(value.encode()) <= limit:
            return False
        self._dropped["too_long"] += 1
        if (dev.id, name) not in self._too_long:
            if len(self._too_long) >= LOGGED_TOO_LONG:
                self._too_long.clear()
            self._too_long.add((dev.id, name))
            log.warning("device %s: %s is %d bytes long, over local.max_string_length (%d): "
                        "left out of what is published", dev.id, name, len(value.encode()),
                        limit)
        return True

    def clear_discovery(self, dev: Device) -> list[Publication]:
        """What removes a removed device from Home Assistant."""
        return self.discovery.forget(device_owner(dev.id))

    def clear_topics(self, dev: Device) -> list[Publication]:
        """Empty retained payloads for every device topic a removed device had (its events
        are not retained: only their memory goes)."""
        for name in self._event_names():
            self._event_stamps.pop((dev.id, name), None)
        locks = [f"{key}/state" for key, spec
                 in self.settings.commands.profile(dev.info.device_type_id).items()
                 if spec.component == "lock" or spec.setting is not None]
        leaves = ["state", "availability", "info", *dev.values, "last_seen", "position",
                  LAST_COMMAND, "connections", *locks]
        return [Publication(self.topics.device(dev.id, leaf), b"") for leaf in leaves]

    def reset(self) -> None:
        """After a local reconnect nothing can be assumed published."""
        self.discovery.reset()

    def forget(self, dev: Device) -> None:
        """Nothing of `dev` can be assumed published (another replica of a split fleet
        published it meanwhile): its next render is in full. Clears nothing."""
        dev.sent.clear()
        self.discovery.forget(device_owner(dev.id))
