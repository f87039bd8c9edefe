"""The per-device state cache: the merge of everything flespi said about each device.

Updates mark a device dirty; the publisher takes dirty devices in batches, which is what
coalesces bursts (a flespi message fans out into one publication per parameter) into one
local state publish per device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.normalize.catalog import DEVICE_INFO

_MISSING = object()
STATE = 1
INFO = 2
AVAILABILITY = 4
DISCOVERY = 8  # the set of entities or the device block changed
CONNECTIONS = 16  # the device's connections to flespi
SETTINGS = 32  # a device setting a number entity shows
ALL = STATE | INFO | AVAILABILITY | DISCOVERY | CONNECTIONS | SETTINGS
# What the bridge keeps of a flespi connection object (its `ident` is the device's, known).
CONNECTION_FIELDS = ("source", "transport", "established", "secondary")


@dataclass(slots=True)
class Info:
    name: str | None = None
    ident: str | None = None
    device_type_id: int | None = None
    protocol_id: int | None = None

    def as_dict(self, device_id: int) -> dict[str, Any]:
        return {
            "id": device_id,
            "name": self.name,
            "ident": self.ident,
            "device_type_id": self.device_type_id,
            "protocol_id": self.protocol_id,
        }


@dataclass(frozen=True, slots=True)
class Names:
    """What flespi calls a device's type and protocol (None where not known yet)."""

    model: str | None = None  # the device type's title, else its name
    model_id: str | None = None  # the device type's name, e.g. "omni-scooter"
    manufacturer: str | None = None  # the protocol's title, else its name


@dataclass(slots=True)
class Device:
    id: int
    values: dict[str, Any] = field(default_factory=dict)
    # attribute -> timestamp of its value, so late (replayed, reordered) values lose
    stamps: dict[str, float] = field(default_factory=dict)
    last_seen: float | None = None
    info: Info = field(default_factory=Info)
    online: bool | None = None
    dirty: int = 0
    # attribute values last published on per-attribute topics (output "attribute"/"both")
    sent: dict[str, Any] = field(default_factory=dict)
    # monotonic time of the oldest unpublished value change (the latency histogram)
    changed_at: float | None = None
    # lock entity -> targets of its commands in flight (True: locking), oldest first
    pending: dict[str, list[bool]] = field(default_factory=dict)
    # flespi connection id -> its CONNECTION_FIELDS; None until flespi reported any
    connections: dict[str, dict[str, Any]] | None = None
    # flespi setting name -> its current value (only settings a command profile shows)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.name or f"flespi {self.id}"

    def state(self) -> dict[str, Any]:
        """The public state document: attributes plus `last_seen` (ISO 8601, UTC)."""
        doc = dict(self.values)
        if self.last_seen is not None:
            doc["last_seen"] = iso(self.last_seen)
        return doc


def connections_document(dev: Device) -> dict[str, Any]:
    """`<base>/<id>/connections`: the primary connection's fields at the top (what Home
    Assistant shows as the connectivity entity's attributes), every connection in a list,
    primary ones first, newest first."""
    conns = dev.connections or {}

    def order(item: tuple[str, dict[str, Any]]) -> tuple[bool, float]:
        established = item[1].get("established")
        newest = established if isinstance(established, int | float) else 0.0
        return bool(item[1].get("secondary")), -newest

    listed = []
    for conn_id, conn in sorted(conns.items(), key=order):
        entry: dict[str, Any] = {"id": conn_id, **conn}
        established = conn.get("established")
        if isinstance(established, int | float) and not isinstance(established, bool):
            entry["established"] = iso(established)
        listed.append(entry)
    doc: dict[str, Any] = {k: v for k, v in listed[0].items() if k != "id"} if listed else {}
    doc["connections"] = listed
    doc["count"] = len(listed)
    return doc


def iso(ts: float) -> str:
    """`ts` as ISO 8601 UTC to the second. Every state carries one and strftime is slow
    (a few microseconds), so the text of recent seconds is kept."""
    second = int(ts)
    if 0 <= ts - second < _LAST_MICROSECOND:  # never rounded up into the next second
        text = _ISO.get(second)
        if text is None:
            if len(_ISO) >= _ISO_KEPT:
                _ISO.clear()
            text = _ISO[second] = _iso(second)
        return text
    return _iso(ts)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# datetime rounds to the microsecond: from here on a time may round into the next second.
_LAST_MICROSECOND = 0.9999995
_ISO_KEPT = 4096  # seconds whose text is kept (over an hour of a live fleet)
_ISO: dict[int, str] = {}


def _info_from_object(obj: dict[str, Any]) -> Info:
    conf = obj.get("configuration")
    ident = conf.get("ident") if isinstance(conf, dict) else None
    name = obj.get("name")
    dtype = obj.get("device_type_id")
    proto = obj.get("protocol_id")
    return Info(
        name=name if isinstance(name, str) else None,
        ident=ident if isinstance(ident, str) else None,
        device_type_id=dtype if isinstance(dtype, int) and not isinstance(dtype, bool) else None,
        protocol_id=proto if isinstance(proto, int) and not isinstance(proto, bool) else None,
    )


class Store:
    def __init__(self) -> None:
        self.devices: dict[int, Device] = {}
        self._dirty: dict[int, None] = {}  # insertion-ordered set
        self._idents: dict[str, int] = {}  # ident (from device objects) -> device id

    def device(self, device_id: int) -> Device:
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.devices[device_id] = Device(device_id)
        return dev

    def mark(self, dev: Device, flags: int) -> None:
        """Publish `flags` of this device again (a batch carrying them failed); a device
        removed meanwhile stays removed."""
        if self.devices.get(dev.id) is dev:
            dev.dirty |= flags
            self._dirty[dev.id] = None

    @property
    def has_dirty(self) -> bool:
        return bool(self._dirty)

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    def take_dirty(self) -> list[Device]:
        """Dirty devices in the order they changed; the caller takes each one's `dirty`
        flags when it renders it (and gives them back with `mark` if publishing fails)."""
        ids = list(self._dirty)
        self._dirty.clear()
        return [self.devices[i] for i in ids]

    def mark_all(self, flags: int = ALL) -> None:
        """Everything is republished (after a reconnect to the local broker), or only
        what `flags` names."""
        for dev in self.devices.values():
            if flags & STATE:
                dev.sent.clear()
            self.mark(dev, flags)

    def apply_values(self, device_id: int, values: dict[str, Any], ts: float | None) -> bool:
        """Merge normalized attributes; True if the published state changes."""
        dev = self.devices.get(device_id) or self.device(device_id)
        now = time.time()
        # A value stamped ahead of our clock (a device clock running fast) counts as arriving
        # now: at face value it would make every later value look older and lose, and
        # `last_seen` would lie in the future.
        if ts is None or ts > now:
            ts = now
        last = dev.last_seen
        if last is None or ts > last:
            # newer than anything the device said (the usual case): no stamp can be newer,
            # and `last_seen` moves, so the state changes whatever the values
            current = dev.values
            flags = STATE
            for name in DEVICE_INFO:
                if name in values:
                    old, value = current.get(name, _MISSING), values[name]
                    if old != value or type(old) is not type(value):
                        flags |= DISCOVERY
            known = len(current)
            current.update(values)
            if len(current) != known:
                flags |= DISCOVERY  # a new entity
            dev.stamps.update(dict.fromkeys(values, ts))
            dev.last_seen = ts
            dev.dirty |= flags
            self._dirty[device_id] = None
            if dev.changed_at is None:
                dev.changed_at = time.monotonic()
            return True
        changed = False
        flags = STATE
        stamps, current = dev.stamps, dev.values
        for name, value in values.items():
            if stamps.get(name, 0.0) > ts:
                continue  # an older value arriving late
            stamps[name] = ts
            old = current.get(name, _MISSING)
            # type matters too: 1 == True, but the state must say `true`
            if old != value or type(old) is not type(value):
                if old is _MISSING or name in DEVICE_INFO:
                    flags |= DISCOVERY  # a new entity, or the device info changed
                current[name] = value
                changed = True
        if dev.last_seen is None or ts > dev.last_seen:
            dev.last_seen = ts
            changed = True
        if changed:
            dev.dirty |= flags  # `mark`, inlined: this runs once per upstream value
            self._dirty[device_id] = None
            if dev.changed_at is None:
                dev.changed_at = time.monotonic()
        return changed

    def apply_object(self, device_id: int, obj: dict[str, Any]) -> bool:
        dev = self.device(device_id)
        info = _info_from_object(obj)
        if info.name is None:
            info.name = dev.info.name
        if info == dev.info:
            return False
        # another device type: another command profile, whose locks and settings show
        flags = INFO | DISCOVERY
        if info.device_type_id != dev.info.device_type_id:
            flags |= STATE | SETTINGS
        if dev.info.ident != info.ident:
            self._forget_ident(dev)
            if info.ident is not None:
                self._idents[info.ident] = device_id
        dev.info = info
        self.mark(dev, flags)
        return True

    def apply_name(self, device_id: int, name: str) -> bool:
        dev = self.device(device_id)
        if dev.info.name == name:
            return False
        dev.info.name = name
        self.mark(dev, INFO | DISCOVERY)
        return True

    def apply_setting(self, device_id: int, name: str, value: Any) -> bool:
        """A device setting's current value (None: flespi removed it); True if it changed."""
        dev = self.device(device_id)
        if value is None:
            if name not in dev.settings:
                return False
            del dev.settings[name]
        elif name in dev.settings and dev.settings[name] == value \
                and type(dev.settings[name]) is type(value):
            return False
        else:
            dev.settings[name] = value
        self.mark(dev, SETTINGS)
        return True

    def apply_connected(self, device_id: int, online: bool) -> bool:
        dev = self.device(device_id)
        if dev.online is online:
            return False
        self.mark(dev, AVAILABILITY if dev.online is not None else AVAILABILITY | DISCOVERY)
        dev.online = online
        return True

    def apply_connection(self, device_id: int, conn_id: str,
                         obj: dict[str, Any] | None) -> bool:
        """A connection object (None: flespi removed it); True if the device's connections
        changed. Only its CONNECTION_FIELDS with JSON scalar values are kept."""
        dev = self.devices.get(device_id) if obj is None else self.device(device_id)
        if dev is None:
            return False
        conns = dev.connections if dev.connections is not None else {}
        if obj is None:
            if conn_id not in conns:
                return False
            del conns[conn_id]
        else:
            kept = {k: obj[k] for k in CONNECTION_FIELDS
                    if isinstance(obj.get(k), str | int | float | bool)}
            if conns.get(conn_id) == kept and dev.connections is not None:
                return False
            conns[conn_id] = kept
        dev.connections = conns
        self.mark(dev, CONNECTIONS)
        return True

    def remove(self, device_id: int) -> Device | None:
        self._dirty.pop(device_id, None)
        dev = self.devices.pop(device_id, None)
        if dev is not None:
            self._forget_ident(dev)
        return dev

    def by_ident(self, ident: str) -> int | None:
        """The device whose flespi device object has this ident (messages from a channel
        name their device only by ident)."""
        return self._idents.get(ident)

    def _forget_ident(self, dev: Device) -> None:
        if dev.info.ident is not None and self._idents.get(dev.info.ident) == dev.id:
            del self._idents[dev.info.ident]
