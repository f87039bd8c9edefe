"""The parameter catalogue: which flespi parameters the bridge understands, as data.

One row per flespi telemetry parameter, named as in flespi's parameter dictionary (one
naming across its protocols: `engine.ignition.status`, `vehicle.mileage`, `can.fuel.level`,
...). A row says which state attribute(s) the value becomes, how it is validated, and how
Home Assistant should present it (component, device class, state class, unit and entity
category, all valid for current Home Assistant: `bridge.normalize.ha_classes`). Adding a
parameter is adding a row; nothing else in the bridge branches on parameter names.
Parameters outside the catalogue are named by `bridge.normalize.rules` (with
`flespi.parameters = "all"`), and any row can be changed by the configuration's
`flespi.overrides` (`bridge.normalize.parameters`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ValueType = Literal["int", "float", "bool", "str", "object"]
Component = Literal["sensor", "binary_sensor", "device_tracker", "event"]
# (value, event type): a value that, when reported, means something happened
Events = tuple[tuple[Any, str], ...]

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
    # False: Home Assistant creates the entity disabled (rule-made diagnostics)
    enabled_by_default: bool = True
    # Reported values that are events (an `event` entity and device triggers, alongside
    # the component's entity unless that is "event" itself): `((True, "pressed"),)`.
    events: Events = ()


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
    "valid": _binary("position_valid", "Position valid", entity_category="diagnostic",
                     icon="mdi:map-marker-check"),
}

_DIAG = "diagnostic"


def _event(name: str, label: str, event_type: str = "detected", **kw: Any) -> Attribute:
    """A parameter reported true when something happened: an event, no state entity."""
    kw.setdefault("component", "event")
    return Attribute(name, "bool", label, events=((True, event_type),), **kw)


ON_OFF: Events = ((True, "on"), (False, "off"))


def _io(prefix: str, label: str, count: int) -> tuple[Parameter, ...]:
    """Numbered digital inputs/outputs (`din.1`, ...): booleans, one entity each."""
    return tuple(Parameter(f"{prefix}.{i}", _binary(f"{prefix}_{i}", f"{label} {i}",
                                                    icon="mdi:electric-switch"))
                 for i in range(1, count + 1))


def _ain(count: int) -> tuple[Parameter, ...]:
    return tuple(Parameter(f"ain.{i}", _sensor(f"ain_{i}", f"Analog input {i}", unit="V",
                                               device_class="voltage",
                                               state_class="measurement"))
                 for i in range(1, count + 1))


def _temperature(name: str, label: str, **kw: Any) -> Attribute:
    return _sensor(name, label, unit="°C", device_class="temperature",
                   state_class="measurement", minimum=-273.15, **kw)


def _counter(name: str, label: str, unit: str, device_class: str, **kw: Any) -> Attribute:
    """A total that only grows (mileage, engine hours, fuel consumed): Home Assistant's
    long-term statistics sum it (`total_increasing`)."""
    return _sensor(name, label, unit=unit, device_class=device_class,
                   state_class="total_increasing", minimum=0, **kw)


def _percent(name: str, label: str, **kw: Any) -> Attribute:
    return _sensor(name, label, unit="%", state_class="measurement", minimum=0, maximum=100,
                   **kw)


CATALOG: tuple[Parameter, ...] = (
    # the e-scooter of the reference
    Parameter("battery.level", _sensor("battery", "Battery", "int", unit="%",
              device_class="battery", state_class="measurement", minimum=0, maximum=100)),
    Parameter("battery.voltage", _sensor("voltage", "Voltage", unit="V", device_class="voltage",
              state_class="measurement")),
    Parameter("battery.charging.status", _binary("charging", "Charging",
              device_class="battery_charging")),
    Parameter("gsm.signal.level", _sensor("signal", "Signal", "int", unit="%",
              state_class="measurement", entity_category=_DIAG,
              icon="mdi:signal", minimum=0, maximum=100)),
    Parameter("lock.status", _binary("locked", "Locked", device_class="lock", invert=True)),
    Parameter("position", fields=_POSITION_FIELDS),
    Parameter("position.speed", _POSITION_FIELDS["speed"]),
    Parameter("position.satellites", _POSITION_FIELDS["satellites"]),
    # engine and motion
    Parameter("engine.ignition.status", _binary("ignition", "Ignition", icon="mdi:engine",
                                                events=ON_OFF)),
    Parameter("movement.status", _binary("movement", "Movement", device_class="moving")),
    Parameter("engine.blocked.status", _binary("engine_blocked", "Engine blocked",
              icon="mdi:engine-off")),
    Parameter("vehicle.mileage", _counter("mileage", "Mileage", "km", "distance",
              icon="mdi:counter")),
    Parameter("can.vehicle.mileage", _counter("can_mileage", "CAN mileage", "km", "distance",
              icon="mdi:counter")),
    Parameter("engine.motorhours", _counter("engine_hours", "Engine hours", "h", "duration",
              icon="mdi:engine-outline")),
    Parameter("can.engine.motorhours", _counter("can_engine_hours", "CAN engine hours", "h",
              "duration", icon="mdi:engine-outline")),
    Parameter("engine.rpm", _sensor("rpm", "Engine RPM", unit="rpm", state_class="measurement",
              icon="mdi:gauge", minimum=0)),
    Parameter("can.engine.rpm", _sensor("can_rpm", "CAN engine RPM", unit="rpm",
              state_class="measurement", icon="mdi:gauge", minimum=0)),
    Parameter("can.vehicle.speed", _sensor("can_speed", "CAN speed", unit="km/h",
              device_class="speed", state_class="measurement", minimum=0)),
    Parameter("can.throttle.pedal.level", _percent("throttle", "Throttle pedal",
              icon="mdi:car-speed-limiter")),
    Parameter("can.engine.load.level", _percent("engine_load", "Engine load", icon="mdi:engine")),
    # fuel
    Parameter("fuel.level", _percent("fuel_level", "Fuel level", icon="mdi:gas-station")),
    Parameter("can.fuel.level", _percent("can_fuel_level", "CAN fuel level",
              icon="mdi:gas-station")),
    Parameter("can.fuel.volume", _sensor("can_fuel_volume", "CAN fuel volume", unit="L",
              device_class="volume_storage", state_class="measurement", minimum=0)),
    Parameter("fuel.consumed", _counter("fuel_consumed", "Fuel consumed", "L", "volume",
              icon="mdi:fuel")),
    Parameter("can.fuel.consumed", _counter("can_fuel_consumed", "CAN fuel consumed", "L",
              "volume", icon="mdi:fuel")),
    Parameter("can.fuel.consumption", _sensor("can_fuel_rate", "CAN fuel rate", unit="L/h",
              state_class="measurement", icon="mdi:fuel", minimum=0)),
    Parameter("can.adblue.level", _percent("adblue_level", "AdBlue level", icon="mdi:water")),
    # temperatures
    Parameter("can.engine.temperature", _temperature("engine_temperature",
              "Engine temperature")),
    Parameter("can.engine.coolant.temperature", _temperature("coolant_temperature",
              "Coolant temperature")),
    Parameter("can.engine.oil.temperature", _temperature("oil_temperature",
              "Oil temperature")),
    Parameter("can.ambient.air.temperature", _temperature("ambient_temperature",
              "Ambient temperature")),
    Parameter("device.temperature", _temperature("device_temperature", "Device temperature",
              entity_category=_DIAG)),
    Parameter("battery.temperature", _temperature("battery_temperature", "Battery temperature",
              entity_category=_DIAG)),
    # power
    Parameter("external.powersource.voltage", _sensor("external_voltage", "External voltage",
              unit="V", device_class="voltage", state_class="measurement")),
    Parameter("external.powersource.status", _binary("external_power", "External power",
              device_class="power")),
    Parameter("battery.current", _sensor("battery_current", "Battery current", unit="A",
              device_class="current", state_class="measurement", entity_category=_DIAG)),
    # inputs and outputs: `din`/`dout` are bitmasks of all of them, `din.N` one each
    Parameter("din", _sensor("din", "Digital inputs", "int", entity_category=_DIAG,
              icon="mdi:import", minimum=0)),
    Parameter("dout", _sensor("dout", "Digital outputs", "int", entity_category=_DIAG,
              icon="mdi:export", minimum=0)),
    *_io("din", "Digital input", 4),
    *_io("dout", "Digital output", 4),
    *_ain(2),
    # events and alarms
    # (a status that is also an event: a binary sensor, and an event when it turns on)
    Parameter("alarm.event", _binary("alarm", "Alarm", device_class="safety",
                                     events=((True, "triggered"),))),
    Parameter("crash.event", _binary("crash", "Crash", device_class="safety",
                                     events=((True, "detected"),))),
    Parameter("towing.alarm.status", _binary("towing", "Towing", device_class="safety",
                                             events=((True, "detected"),))),
    Parameter("alarm.event.trigger", _event("alarm_trigger", "Alarm trigger", "triggered",
                                            icon="mdi:alarm-light")),
    Parameter("panic.button.event", _event("panic_button", "Panic button", "pressed",
                                           device_class="button", icon="mdi:alarm-bell")),
    Parameter("panic.button.status", _event("panic_button_status", "Panic button",
                                            "pressed", device_class="button",
                                            icon="mdi:alarm-bell")),
    Parameter("crash.event.status", _event("crash_detected", "Crash detection",
                                           icon="mdi:car-emergency")),
    Parameter("harsh.acceleration.event", _event("harsh_acceleration", "Harsh acceleration",
                                                 icon="mdi:speedometer")),
    Parameter("harsh.braking.event", _event("harsh_braking", "Harsh braking",
                                            icon="mdi:car-brake-alert")),
    Parameter("harsh.cornering.event", _event("harsh_cornering", "Harsh cornering",
                                              icon="mdi:car-turbocharger")),
    Parameter("geofence.status", _binary("geofence", "Geofence", device_class="presence",
                                         events=((True, "enter"), (False, "leave")))),
    Parameter("overspeeding.status", _binary("overspeeding", "Overspeeding",
              device_class="problem", icon="mdi:speedometer")),
    Parameter("can.doors.status", _binary("doors", "Doors", device_class="door")),
    # GNSS and GSM
    Parameter("gnss.status", _binary("gnss", "GNSS fix", entity_category=_DIAG,
              icon="mdi:crosshairs-gps")),
    Parameter("gsm.operator.code", _sensor("operator", "Operator", "str", component="sensor",
              entity_category=_DIAG, icon="mdi:sim")),
    Parameter("gsm.network.roaming.status", _binary("roaming", "Roaming",
              entity_category=_DIAG, icon="mdi:earth")),
    # the vehicle
    Parameter("vehicle.vin", _sensor("vin", "VIN", "str", entity_category=_DIAG,
              icon="mdi:car-info")),
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
