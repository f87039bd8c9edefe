"""Ingest: an upstream message becomes state. Topic -> catalogue -> store, and the
accounting of invalid input (counted by reason, logged rate-limited, never raised).

Full device messages (`flespi.messages`, and the HTTP stream's batches) go through
`apply_message`: the same catalogue, read from flat dotted keys (`bridge.normalize.messages`).

Runs once per flespi message, synchronously, on the hot path.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson

from bridge.config.settings import Settings
from bridge.core.events import DeviceRemoved, EventHub
from bridge.core.outbox import Outbox
from bridge.core.stats import Stats
from bridge.core.store import Store
from bridge.core.topics import LocalTopics
from bridge.core.transport import Publication
from bridge.flespi import topics as flespi_topics
from bridge.flespi.topics import Kind
from bridge.flespi.upstream import UserProperties, timestamp
from bridge.logs import RateLimitedLog
from bridge.normalize import catalog, messages
from bridge.normalize.catalog import Parameter
from bridge.normalize.parameters import Parameters

log = logging.getLogger(__name__)

# Upstream payloads larger than this are rejected unparsed (flespi values are small).
MAX_UPSTREAM_PAYLOAD = 256 * 1024
# A topic in these trees that does not parse (a device id that is not one) is invalid input.
DEVICE_TREES = (flespi_topics.STATE_PREFIX, flespi_topics.MESSAGE_PREFIX)


class Ingest:
    def __init__(self, settings: Settings, params: Parameters, store: Store, stats: Stats,
                 outbox: Outbox, events: EventHub) -> None:
        """`outbox` takes full flespi messages, republished as they are; `events` hears of
        devices deleted in flespi (`DeviceRemoved`)."""
        self.params = params
        self.catalog = params.table  # read on every message: one attribute lookup less
        # setting name -> the keys of its value object that may hold the number (the
        # profiles' value_property); settings not named here are ignored
        self.settings = dict(settings.commands.setting_properties())
        self.store = store
        self.stats = stats
        self.topics = LocalTopics(settings.local.base_topic)
        self.outbox = outbox
        self.events = events
        self._bad = RateLimitedLog(log)
        self.keys = messages.flat_keys(params)

    def handle(self, topic: str, payload: bytes, props: UserProperties) -> None:
        parsed = flespi_topics.parse(topic)
        if parsed is None:
            self.stats.upstream_messages["ignored"] += 1
            if topic.startswith(DEVICE_TREES):
                self.invalid("bad_topic", topic, "not a device topic (bad id or level)")
            return
        kind, device_id, name = parsed
        self.stats.upstream_messages[kind.value] += 1
        param = self.catalog.get(name) if kind is Kind.TELEMETRY else None
        if kind is Kind.TELEMETRY and param is None:
            skipped = self.params.skipped.get(name)
            if skipped is not None:
                self.stats.skipped[skipped] += 1
                return
            if not self.params.wants(name):
                return  # not in the catalogue: ignored, but still acknowledged
        if kind is Kind.SETTING and name not in self.settings:
            return
        if not payload:
            if kind is Kind.DEVICE:  # flespi clears a deleted device's retained object
                self._remove(device_id)
            elif kind is Kind.CONNECTION:  # the connection closed
                self.store.apply_connection(device_id, name, None)
            elif kind is Kind.SETTING:
                self.store.apply_setting(device_id, name, None)
            return
        if len(payload) > MAX_UPSTREAM_PAYLOAD:
            self.invalid("oversized", topic, f"{len(payload)} bytes")
            return
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            self.invalid("bad_json", topic, str(exc))
            return
        if kind is Kind.TELEMETRY:
            if param is None:
                resolved = self.params.resolve(name, value)
                if not isinstance(resolved, Parameter):
                    if resolved is not None:
                        self.stats.skipped[resolved] += 1
                    return
                param = resolved
            self._telemetry(topic, device_id, param, value, props)
        elif kind is Kind.DEVICE:
            if isinstance(value, dict):
                self.store.apply_object(device_id, value)
            else:
                self.invalid("bad_value", topic, "device object is not a JSON object")
        elif kind is Kind.PROPERTY:
            self._property(topic, device_id, name, value)
        elif kind is Kind.CONNECTION:
            if isinstance(value, dict):
                self.store.apply_connection(device_id, name, value)
            else:
                self.invalid("bad_value", topic, "connection is not a JSON object")
        elif kind is Kind.SETTING:
            self._setting(topic, device_id, name, value)
        elif kind is Kind.MESSAGE:
            if isinstance(value, dict):
                self.outbox.add_one(Publication(self.topics.device(device_id, "message"),
                                                payload, False))
                self.apply_message(device_id, messages.map_message(self.keys, value), topic)
            else:
                self.invalid("bad_value", topic, "message is not a JSON object")

    def _telemetry(self, topic: str, device_id: int, param: Parameter, value: Any,
                   props: UserProperties) -> None:
        # only object values (position) can be partly rejected: no list for the rest
        rejected: list[str] | None = [] if param.fields else None
        try:
            values = catalog.normalize(param, value, rejected)
        except catalog.ValueRejected as exc:
            self.invalid("bad_value", topic, str(exc))
            return
        if rejected:  # fields of an object value that did not fit; the rest is kept
            self.invalid("bad_value", topic, "; ".join(rejected))
        self.store.apply_values(device_id, values, timestamp(props))

    def _remove(self, device_id: int) -> None:
        dev = self.store.remove(device_id)
        if dev is not None:
            log.info("device %s (%s) was deleted in flespi", device_id, dev.name)
            self.events.emit(DeviceRemoved(dev))

    def _setting(self, topic: str, device_id: int, name: str, value: Any) -> None:
        """A setting's current value: a number, or flespi's object of the setting's
        properties holding it under the profile's `value_property`."""
        if isinstance(value, dict):
            keys = [k for k in self.settings[name] if k in value]
            if not keys:
                self.invalid("bad_value", topic, "setting has none of the properties "
                             f"{', '.join(self.settings[name])}")
                return
            value = value[keys[0]]
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or abs(value) > catalog.MAX_ABS_NUMBER:
            self.invalid("bad_value", topic, f"setting value is not a number: {value!r:.40}")
            return
        self.store.apply_setting(device_id, name, value)

    def _property(self, topic: str, device_id: int, name: str, value: Any) -> None:
        if name == "connected":
            if isinstance(value, bool):
                self.store.apply_connected(device_id, value)
            else:
                self.invalid("bad_value", topic, "connected is not a boolean")
        elif name == "name":
            if isinstance(value, str):
                self.store.apply_name(device_id, value)
            else:
                self.invalid("bad_value", topic, "name is not a string")

    def apply_message(self, device_id: int, mapped: messages.Mapped, where: str,
                      source: str = "upstream") -> None:
        """A device message's attributes become state, its time decides what is newer;
        values that do not fit are left out and counted, the rest is kept."""
        if mapped.problems:
            self.invalid("bad_value", where, "; ".join(mapped.problems), source)
        if not mapped.values:
            return  # nothing the catalogue knows: like telemetry outside it, no news
        store = self.store
        store.apply_values(device_id, mapped.values, mapped.timestamp)
        if mapped.name is not None and store.devices[device_id].info.name is None:
            store.apply_name(device_id, mapped.name)  # until flespi's device object says

    def invalid(self, reason: str, topic: str, detail: str, source: str = "upstream") -> None:
        self.stats.invalid[source, reason] += 1
        self._bad.warning(f"{source}:{reason}", "ignored %s message on %.200r: %s: %.200s",
                          source, topic, reason, detail)
