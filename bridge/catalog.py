"""The parameter catalogue: which flespi parameters the bridge understands, as data.

One row per flespi telemetry parameter. A row says which state attribute(s) the value
becomes, how it is validated, and how Home Assistant should present it. Adding a parameter
is adding a row; nothing else in the bridge branches on parameter names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ValueType = Literal["int", "float", "bool", "str", "object"]
Component = Literal["sensor", "binary_sensor", "device_tracker"]

# Values beyond this are treated as garbage rather than published (JSON numbers that
# large are usually overflowed counters, and Home Assistant cannot graph them).
MAX_ABS_NUMBER = 1e15
# Nesting levels of an untyped (extra parameter) value at most: flespi values are flat or
# nearly so, and much deeper ones could not be encoded again for publishing.
MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Attribute:
    """One normalized state attribute and how Home Assistant shows it."""

    name: str
    type: ValueType
    label: str
    unit: str | None = None
    component: Component | None = "sensor"
    device_class: str | None = None
    state_class: str | None = None
    entity_category: str | None = None
    icon: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    # Home Assistant binary_sensor is "on" when the value is false (the lock class: on=unlocked)
    invert: bool = False


@dataclass(frozen=True, slots=True)
class Parameter:
    """A flespi parameter; `fields` maps keys of an object value to attributes."""

    flespi: str
    attribute: Attribute | None = None
    fields: Mapping[str, Attribute] = field(default_factory=dict)


def _sensor(name: str, label: str, type_: ValueType = "float", **kw: Any) -> Attribute:
    return Attribute(name, type_, label, **kw)


def _binary(name: str, label: str, **kw: Any) -> Attribute:
    kw.setdefault("component", "binary_sensor")
    return Attribute(name, "bool", label, **kw)


_POSITION_FIELDS = {
    "latitude": _sensor("latitude", "Latitude", unit="°", component=None,
                        minimum=-90, maximum=90),
    "longitude": _sensor("longitude", "Longitude", unit="°", component=None,
                         minimum=-180, maximum=180),
    "altitude": _sensor("altitude", "Altitude", unit="m", device_class="distance",
                        state_class="measurement", icon="mdi:altimeter"),
    "satellites": _sensor("satellites", "Satellites", "int", state_class="measurement",
                          entity_category="diagnostic", icon="mdi:satellite-variant", minimum=0),
    "hdop": _sensor("hdop", "HDOP", state_class="measurement", entity_category="diagnostic",
                    icon="mdi:crosshairs-gps", minimum=0),
    "speed": _sensor("speed", "Speed", unit="km/h", device_class="speed",
                     state_class="measurement", minimum=0),
    "direction": _sensor("direction", "Direction", unit="°", state_class="measurement",
                         icon="mdi:compass", minimum=0, maximum=360),
    "valid": _binary("position_valid", "Position valid", entity_category="diagnostic"),
}

CATALOG: tuple[Parameter, ...] = (
    Parameter("battery.level", _sensor("battery", "Battery", "int", unit="%",
              device_class="battery", state_class="measurement", minimum=0, maximum=100)),
    Parameter("battery.voltage", _sensor("voltage", "Voltage", unit="V", device_class="voltage",
              state_class="measurement")),
    Parameter("battery.charging.status", _binary("charging", "Charging",
              device_class="battery_charging")),
    Parameter("gsm.signal.level", _sensor("signal", "Signal", "int", unit="%",
              state_class="measurement", entity_category="diagnostic",
              icon="mdi:signal", minimum=0, maximum=100)),
    Parameter("lock.status", _binary("locked", "Locked", device_class="lock", invert=True)),
    Parameter("position", fields=_POSITION_FIELDS),
    Parameter("position.speed", _POSITION_FIELDS["speed"]),
    Parameter("engine.ignition.status", _binary("ignition", "Ignition", icon="mdi:engine")),
    Parameter("external.powersource.voltage", _sensor("external_voltage", "External voltage",
              unit="V", device_class="voltage", state_class="measurement")),
    Parameter("movement.status", _binary("movement", "Movement", device_class="moving")),
    # no entities: Home Assistant shows them in the device info (DEVICE_INFO)
    Parameter("firmware.version", _sensor("firmware", "Firmware", "str", component=None)),
    Parameter("hardware.version", _sensor("hardware", "Hardware", "str", component=None)),
)

# Attributes that are part of the device's info in Home Assistant: attribute -> device key.
DEVICE_INFO: Mapping[str, str] = {"firmware": "sw_version", "hardware": "hw_version"}

# The attribute every state carries: the time of the newest value, ISO 8601 UTC.
LAST_SEEN = Attribute("last_seen", "str", "Last seen", device_class="timestamp",
                      entity_category="diagnostic")


def extra_parameter(name: str) -> Parameter:
    """A parameter listed in `flespi.extra_parameters`: published as-is, untyped."""
    attr = Attribute(name.replace(".", "_").replace("-", "_"), "object", name, component=None)
    return Parameter(name, attr)


def build(extra: Iterable[str] = ()) -> dict[str, Parameter]:
    """The active catalogue, keyed by flespi parameter name."""
    table = {p.flespi: p for p in CATALOG}
    for name in extra:
        table.setdefault(name, extra_parameter(name))
    return table


def attributes(table: Mapping[str, Parameter]) -> dict[str, Attribute]:
    """Every attribute the catalogue can produce, by attribute name, in catalogue order."""
    out: dict[str, Attribute] = {}
    for p in table.values():
        for attr in ([p.attribute] if p.attribute else []) + list(p.fields.values()):
            out.setdefault(attr.name, attr)
    return out


# --- value coercion -------------------------------------------------------------------

class ValueRejected(ValueError):
    """The value does not fit the attribute; the message says why."""


def _number(attr: Attribute, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueRejected(f"{attr.name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or abs(value) > MAX_ABS_NUMBER:
        raise ValueRejected(f"{attr.name}: {value!r} is out of range")
    if (attr.minimum is not None and value < attr.minimum) or (
        attr.maximum is not None and value > attr.maximum
    ):
        raise ValueRejected(f"{attr.name}: {value!r} outside [{attr.minimum}, {attr.maximum}]")
    return value


def _to_int(attr: Attribute, value: Any) -> int:
    number = _number(attr, value)
    if isinstance(number, float) and not number.is_integer():
        return round(number)
    return int(number)


def _to_float(attr: Attribute, value: Any) -> float:
    return _number(attr, value)


def _to_bool(attr: Attribute, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueRejected(f"{attr.name}: expected a boolean, got {value!r:.40}")


def _to_str(attr: Attribute, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueRejected(f"{attr.name}: expected a string, got {type(value).__name__}")


def _to_object(attr: Attribute, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueRejected(f"{attr.name}: {value!r} is not a JSON value")
    if not _depth_within(value, MAX_DEPTH):
        raise ValueRejected(f"{attr.name}: nested deeper than {MAX_DEPTH} levels")
    return value


def _depth_within(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in children)
    return True


COERCE: dict[ValueType, Callable[[Attribute, Any], Any]] = {
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "str": _to_str,
    "object": _to_object,
}


def normalize(param: Parameter, value: Any, errors: list[str] | None = None) -> dict[str, Any]:
    """The attributes a parameter value sets. Raises ValueRejected if nothing usable;
    fields of an object value that do not fit are left out, and listed in `errors`."""
    if param.attribute is not None:
        attr = param.attribute
        return {attr.name: COERCE[attr.type](attr, value)}
    if not isinstance(value, dict):
        raise ValueRejected(f"{param.flespi}: expected an object, got {type(value).__name__}")
    out: dict[str, Any] = {}
    problems = []
    for key, attr in param.fields.items():
        if key in value:
            try:
                out[attr.name] = COERCE[attr.type](attr, value[key])
            except ValueRejected as exc:
                problems.append(str(exc))
    if not out:
        raise ValueRejected("; ".join(problems) or f"{param.flespi}: no known fields")
    if errors is not None:
        errors.extend(problems)
    return out
