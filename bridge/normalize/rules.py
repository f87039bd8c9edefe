"""Naming rules: what a flespi parameter outside the catalogue becomes, read from its name.

flespi names carry their meaning, one dictionary across protocols: tags split by dots, the
last ones saying what the value is (`*.status` a boolean, `*.voltage` volts,
`*.temperature` °C, `*.level` percent, `*.mileage` km, ...), a trailing number an index
(`din.5`, `ble.sensor.temperature.2`). With `flespi.parameters = "all"` every parameter a
device sends becomes an attribute by these rules on first sight (its first value decides
between binary sensor, number and text). Unknown shapes stay plain sensors; objects and
arrays make no entity; message metadata (`ident`, `timestamp`, ...) and the dotted copies of
the `position` object's fields are skipped.

Pure functions and data: `rule_attribute(name, value, taken)` never raises, whatever the
name or value (property tests hold it to that).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from bridge.normalize.catalog import ON_OFF, Attribute, Events, ValueType

# Why a parameter makes no entity (the label of flespi_bridge_skipped_parameters_total).
NO_ENTITY = "no_entity"  # an object or array value
METADATA = "metadata"  # message bookkeeping flespi keeps as telemetry
DUPLICATE = "duplicate"  # a field of the `position` object, published with it
IGNORED = "ignored"  # `ignore = true` in the configuration's overrides
LIMIT = "limit"  # more distinct parameters than the bridge takes (`parameters.MAX_RULE_MADE`)
SKIP_REASONS = (NO_ENTITY, METADATA, DUPLICATE, IGNORED, LIMIT)

METADATA_PARAMETERS = frozenset({
    "timestamp", "server.timestamp", "device.id", "device.name", "device.type.id",
    "protocol.id", "channel.id", "ident", "peer",
})
# the `position` object's fields: their dotted copies add nothing to it
POSITION_COPIES = frozenset(f"position.{k}" for k in (
    "latitude", "longitude", "altitude", "direction", "hdop", "valid"))

# Attribute names no rule-made attribute may take: the device's own local topics
# (`<base>/<id>/<attribute>` with per-attribute output) and the dict methods a Home
# Assistant template would read instead of the key (`value_json.items`).
RESERVED = frozenset({
    "state", "availability", "info", "message", "set", "result", "last_command", "position",
    "last_seen", "settings", "connections", "bridge",
    "items", "keys", "values", "get", "update", "pop", "popitem", "copy", "clear",
    "setdefault", "fromkeys",
})
MAX_ATTRIBUTE = 64
# Tags that say where a value comes from or what kind it is rather than what it is.
FILLER = frozenset({"sensor", "value", "actual", "current.value", "instant", "data"})
# First tags of device and network internals: their entities are diagnostics, created
# disabled in Home Assistant.
DIAGNOSTIC_TAGS = frozenset({
    "gsm", "gnss", "gps", "glonass", "wifi", "ble", "bluetooth", "sim", "modem", "device",
    "firmware", "hardware", "channel", "protocol", "server", "message", "record", "report",
    "event", "counter", "custom", "io", "peer", "lbs", "sleep", "segment", "packet",
    "position", "diagnostic", "acceleration", "accelerometer", "x", "y", "z",
})
# First tags that say only where a value comes from: diagnostic unless another tag says what
# it is (`custom.door` is a door, `custom.param.77` nobody knows).
SOURCE_TAGS = frozenset({"custom", "io"})
# Last tags of identifiers and codes: plain diagnostic sensors, no unit, no statistics.
CODE_TAGS = frozenset({
    "id", "code", "enum", "type", "mask", "bitmask", "seqnum", "hash", "iccid", "imsi", "imei",
    "mcc", "mnc", "lac", "cellid", "ident", "version", "mode", "reason", "index", "number",
})
# Readable forms of tags in labels.
WORDS = {
    "can": "CAN", "gsm": "GSM", "gnss": "GNSS", "gps": "GPS", "ble": "BLE", "rpm": "RPM",
    "vin": "VIN", "id": "ID", "din": "digital input", "dout": "digital output",
    "ain": "analog input", "lbs": "LBS", "sim": "SIM", "obd": "OBD", "pto": "PTO",
    "iccid": "ICCID", "imsi": "IMSI", "imei": "IMEI", "mcc": "MCC", "mnc": "MNC", "lac": "LAC",
    "hdop": "HDOP", "pdop": "PDOP", "vdop": "VDOP", "dtc": "DTC", "adblue": "AdBlue",
    "motorhours": "engine hours", "cellid": "cell ID", "rssi": "RSSI",
}
# Binary sensor device classes by a tag of the name.
BINARY_CLASSES = {
    "door": "door", "doors": "door", "window": "window", "windows": "window",
    "alarm": "safety", "crash": "safety", "towing": "safety", "panic": "safety",
    "tamper": "tamper", "charging": "battery_charging", "movement": "moving",
    "moving": "moving", "motion": "motion", "connected": "connectivity",
    "connection": "connectivity", "lock": "lock", "locked": "lock", "hood": "opening",
    "trunk": "opening", "plug": "plug", "overspeeding": "problem", "jamming": "problem",
    "malfunction": "problem", "mil": "problem",
}


# Events by the tags of a boolean's name: a last tag (over `status`) that says the value is
# an event, or a first tag of what only ever happens (a press, a harsh manoeuvre).
EVENT_LAST_TAGS = frozenset({"event", "trigger", "triggered", "pressed"})
EVENT_FIRST_TAGS = frozenset({"panic", "harsh", "sos"})
# Tags of a state that also makes events when it changes (a binary sensor as well).
CHANGE_EVENTS: dict[str, Events] = {
    "ignition": ON_OFF,
    "geofence": ((True, "enter"), (False, "leave")),
    "zone": ((True, "enter"), (False, "leave")),
}


@dataclass(frozen=True, slots=True)
class Meaning:
    """What a number whose name has a tag means."""

    unit: str | None
    device_class: str | None
    state_class: str | None
    type: ValueType = "float"
    icon: str | None = None


_MEASURE = "measurement"
_TOTAL = "total_increasing"
# A tag of the name (searched from the last tag back, over filler tags) -> its meaning.
NUMBER_TAGS: dict[str, Meaning] = {
    "voltage": Meaning("V", "voltage", _MEASURE),
    "temperature": Meaning("°C", "temperature", _MEASURE),
    "level": Meaning("%", None, _MEASURE),
    "percentage": Meaning("%", None, _MEASURE),
    "humidity": Meaning("%", "humidity", _MEASURE),
    "mileage": Meaning("km", "distance", _TOTAL, icon="mdi:counter"),
    "odometer": Meaning("km", "distance", _TOTAL, icon="mdi:counter"),
    "distance": Meaning("km", "distance", _MEASURE),
    "speed": Meaning("km/h", "speed", _MEASURE),
    "duration": Meaning("s", "duration", _MEASURE),
    "seconds": Meaning("s", "duration", _MEASURE),
    "motorhours": Meaning("h", "duration", _TOTAL, icon="mdi:engine-outline"),
    "hours": Meaning("h", "duration", _TOTAL),
    "count": Meaning(None, None, _MEASURE, "int"),
    "consumed": Meaning("L", "volume", _TOTAL, icon="mdi:fuel"),
    "volume": Meaning("L", "volume_storage", _MEASURE),
    "rpm": Meaning("rpm", None, _MEASURE, icon="mdi:gauge"),
    "current": Meaning("A", "current", _MEASURE),
    "weight": Meaning("kg", "weight", _MEASURE),
    "dbm": Meaning("dBm", "signal_strength", _MEASURE),
    # flespi's pressures (oil, fuel, air, tyre) are in kPa
    "pressure": Meaning("kPa", "pressure", _MEASURE),
    "ain": Meaning("V", "voltage", _MEASURE),
}
# Counters that are not totals: what remains, what a trip or a period covers.
NOT_TOTAL_TAGS = frozenset({"remaining", "trip", "since", "range", "delta", "recharge",
                            "last", "max", "min", "avg", "average", "daily"})


def tags(name: str) -> tuple[list[str], str | None]:
    """The name's tags and its index (`ble.sensor.temperature.2` -> [ble, sensor,
    temperature], "2")."""
    parts = [p for p in name.lower().split(".") if p]
    index = parts.pop() if len(parts) > 1 and parts[-1].isdigit() else None
    return parts, index


def label(name: str) -> str:
    """A human label from the tags: `can.engine.coolant.temperature` -> "CAN engine
    coolant temperature", `din.5` -> "Digital input 5"; `status` is left out."""
    parts, index = tags(name)
    words = [WORDS.get(p, p) for p in parts if p != "status" or len(parts) == 1]
    if index is not None:
        words.append(index)
    text = " ".join(words)[:MAX_ATTRIBUTE] or name[:MAX_ATTRIBUTE] or "Parameter"
    return text[:1].upper() + text[1:]


def attribute_name(name: str, taken: Container[str] = frozenset()) -> str:
    """A stable attribute name: the flespi name with every run of other characters than
    [a-z0-9] as `_` (`can.fuel.level` -> `can_fuel_level`), starting with a letter. One that
    is reserved or `taken` (by the catalogue or an override) gets a suffix from a checksum of
    the flespi name, so it is the same on every run."""
    base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not base or not base[0].isalpha():
        base = "p_" + base
    base = base[:MAX_ATTRIBUTE].rstrip("_")
    if base in RESERVED or base in taken or len(name) > MAX_ATTRIBUTE:
        suffix = f"_{zlib.crc32(name.encode('utf-8', 'surrogatepass')):08x}"
        base = base[:MAX_ATTRIBUTE - len(suffix)].rstrip("_") + suffix
    return base


def diagnostic(parts: list[str]) -> bool:
    return bool(parts) and (parts[0] in DIAGNOSTIC_TAGS or parts[-1] in CODE_TAGS)


def _meaning(parts: list[str]) -> Meaning | None:
    for part in reversed(parts):
        if part in NUMBER_TAGS:
            return NUMBER_TAGS[part]
        if part not in FILLER:
            return None
    return None


def _binary(parts: list[str]) -> str | None:
    for part in reversed(parts):
        if part in BINARY_CLASSES:
            return BINARY_CLASSES[part]
    return None


def skip_reason(name: str) -> str | None:
    """Why a parameter makes no entity whatever its value, or None."""
    if name in METADATA_PARAMETERS:
        return METADATA
    if name in POSITION_COPIES:
        return DUPLICATE
    return None


def rule_attribute(name: str, value: Any, taken: Container[str] = frozenset()
                   ) -> Attribute | str | None:
    """The attribute a parameter outside the catalogue becomes, from its name and its first
    value; a skip reason (`NO_ENTITY`, ...) when it makes none; None when this value cannot
    tell (JSON null: the next value decides)."""
    reason = skip_reason(name)
    if reason is not None:
        return reason
    if value is None:
        return None
    maker = _MAKERS.get(type(value))
    if maker is None:
        return NO_ENTITY
    parts, _ = tags(name)
    attr = maker(name, parts)
    diag = diagnostic(parts) and not (parts[0] in SOURCE_TAGS and parts[-1] not in CODE_TAGS
                                      and (attr.device_class or attr.unit) is not None)
    return Attribute(
        attribute_name(name, taken), attr.type, label(name), unit=attr.unit,
        component=attr.component, device_class=attr.device_class,
        state_class=attr.state_class, icon=attr.icon, events=attr.events,
        entity_category="diagnostic" if diag and not attr.events else None,
        enabled_by_default=not diag or bool(attr.events))


def rule_events(parts: list[str]) -> tuple[bool, Events]:
    """(whether the value is only an event, the events it makes) by the name's tags."""
    meaningful = [p for p in parts if p != "status"]
    if meaningful and (meaningful[-1] in EVENT_LAST_TAGS or parts[0] in EVENT_FIRST_TAGS):
        happened = "pressed" if "button" in parts else (
            "triggered" if {"alarm", "trigger"} & set(parts) else "detected")
        return True, ((True, happened),)
    for part in parts:
        if part in CHANGE_EVENTS:
            return False, CHANGE_EVENTS[part]
    return False, ()


def _from_bool(_name: str, parts: list[str]) -> Attribute:
    only, events = rule_events(parts)
    if only:
        return Attribute("", "bool", "", component="event", events=events)
    device_class = "presence" if "geofence" in parts or "zone" in parts else _binary(parts)
    return Attribute("", "bool", "", component="binary_sensor", device_class=device_class,
                     events=events)


def _from_number(_name: str, parts: list[str]) -> Attribute:
    meaning = None if parts and parts[-1] in CODE_TAGS else _meaning(parts)
    if meaning is None:  # an unknown shape: a plain sensor, no statistics
        return Attribute("", "float", "")
    state = meaning.state_class
    if state == _TOTAL and NOT_TOTAL_TAGS.intersection(parts):
        state = _MEASURE
    return Attribute("", meaning.type, "", unit=meaning.unit, device_class=meaning.device_class,
                     state_class=state, icon=meaning.icon)


def _from_text(_name: str, _parts: list[str]) -> Attribute:
    return Attribute("", "str", "")


_MAKERS: dict[type, Callable[[str, list[str]], Attribute]] = {
    bool: _from_bool, int: _from_number, float: _from_number, str: _from_text,
}
