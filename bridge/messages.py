"""flespi device messages (flat JSON, dotted keys) -> state attributes, by the catalogue.

One mapping for both ways messages arrive: `flespi/message/gw/devices/{id}` on MQTT
(`flespi.messages`) and batches of flespi's HTTP stream. A message carries what telemetry
carries, flattened: `battery.level`, `lock.status`, and the fields of object parameters as
`position.latitude`, `position.satellites`, ... Every key is looked up in the parameter
table (catalogue, overrides, and with `flespi.parameters = "all"` the rules), so a message
sets exactly the attributes the same values would set as telemetry.

No I/O: the table may learn a rule-made row, as with telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import catalog
from bridge.flespi.topics import MAX_ID_DIGITS
from bridge.parameters import Parameters

# Keys that say which device a message is from.
DEVICE_ID = "device.id"
IDENT = "ident"
TIMESTAMP = "timestamp"
DEVICE_NAME = "device.name"
MAX_DEVICE_ID = 10**MAX_ID_DIGITS - 1


@dataclass(frozen=True, slots=True)
class FlatKeys:
    """The parameter table seen from flat message keys: a key is a whole parameter
    (`battery.level`, looked up like telemetry, rules included) or one field of an object
    parameter (`position.latitude` -> `position`, `latitude`)."""

    resolve: Callable[[str, Any], catalog.Parameter | str | None]
    fields: Mapping[str, tuple[catalog.Parameter, str]]


def flat_keys(params: Parameters) -> FlatKeys:
    fields: dict[str, tuple[catalog.Parameter, str]] = {}
    for param in params.table.values():
        for key in param.fields:
            flat = f"{param.flespi}.{key}"
            if flat not in params.table:  # a parameter of its own (position.speed) reads itself
                fields[flat] = (param, key)
    return FlatKeys(params.resolve, fields)


@dataclass(slots=True)
class Mapped:
    """What one message says: whose it is, when, and the attributes it sets."""

    device_id: int | None
    ident: str | None
    timestamp: float | None
    name: str | None
    values: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # values left out, and why


def _device_id(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_DEVICE_ID:
        return value
    return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            and value > 0:
        return float(value)
    return None


def map_message(keys: FlatKeys, message: Mapping[str, Any]) -> Mapped:
    """The attributes a message sets. Values that do not fit their attribute are left out
    and described in `problems`; the rest is kept (as with telemetry)."""
    ident = message.get(IDENT)
    name = message.get(DEVICE_NAME)
    out = Mapped(_device_id(message.get(DEVICE_ID)), ident if isinstance(ident, str) else None,
                 _timestamp(message.get(TIMESTAMP)), name if isinstance(name, str) else None)
    if TIMESTAMP in message and out.timestamp is None:
        out.problems.append(f"timestamp: {message[TIMESTAMP]!r:.40} is not a time")
    objects: dict[str, tuple[catalog.Parameter, dict[str, Any]]] = {}
    for key, value in message.items():
        part = keys.fields.get(key)
        if part is not None:
            param, sub = part
            objects.setdefault(param.flespi, (param, {}))[1][sub] = value
            continue
        found = keys.resolve(key, value)
        if isinstance(found, catalog.Parameter):
            _normalize(found, value, out)
    for param, value in objects.values():
        _normalize(param, value, out)
    return out


def _normalize(param: catalog.Parameter, value: Any, out: Mapped) -> None:
    try:
        out.values.update(catalog.normalize(param, value, out.problems))
    except catalog.ValueRejected as exc:
        out.problems.append(str(exc))
