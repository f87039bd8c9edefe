"""The parameter catalogue: mapping and validation of flespi values."""

from __future__ import annotations

import importlib.util
import math

import pytest
from support import REPO

from bridge.normalize import catalog, ha_classes
from bridge.normalize.catalog import ValueRejected, normalize

TABLE = catalog.build()

REQUIRED = ["battery.level", "battery.voltage", "battery.charging.status", "gsm.signal.level",
            "lock.status", "position", "position.speed", "engine.ignition.status",
            "external.powersource.voltage", "movement.status"]


def test_catalogue_covers_the_required_parameters() -> None:
    assert set(REQUIRED) <= set(TABLE)


def test_attribute_names_are_unique_and_topic_safe() -> None:
    attrs = catalog.attributes(TABLE)
    for name in attrs:
        assert name.isidentifier()
    # position.speed and position's speed field share one attribute on purpose
    assert TABLE["position.speed"].attribute is TABLE["position"].fields["speed"]


@pytest.mark.parametrize(("param", "value", "expected"), [
    ("battery.level", 70, {"battery": 70}),
    ("battery.level", 70.0, {"battery": 70}),
    ("battery.voltage", 4.09, {"voltage": 4.09}),
    ("battery.charging.status", False, {"charging": False}),
    ("battery.charging.status", 1, {"charging": True}),
    ("gsm.signal.level", 90, {"signal": 90}),
    ("lock.status", True, {"locked": True}),
    ("engine.ignition.status", True, {"ignition": True}),
    ("external.powersource.voltage", 12.6, {"external_voltage": 12.6}),
    ("movement.status", False, {"movement": False}),
    ("position.speed", 17.5, {"speed": 17.5}),
    ("position", {"latitude": -17.72436, "longitude": -63.171508, "altitude": 408.9,
                  "hdop": 0.87, "satellites": 9, "valid": True},
     {"latitude": -17.72436, "longitude": -63.171508, "altitude": 408.9, "hdop": 0.87,
      "satellites": 9, "position_valid": True}),
])
def test_normalize(param: str, value: object, expected: dict[str, object]) -> None:
    result = normalize(TABLE[param], value)
    assert result == expected
    for key, val in expected.items():
        assert type(result[key]) is type(val)


@pytest.mark.parametrize(("param", "value"), [
    ("battery.level", "70"),           # strings are not numbers
    ("battery.level", True),           # nor are booleans
    ("battery.level", 101),            # outside 0..100
    ("battery.level", -1),
    ("battery.voltage", math.inf),
    ("battery.voltage", math.nan),
    ("battery.voltage", 1e300),
    ("battery.charging.status", 2),
    ("battery.charging.status", "true"),
    ("position", [1, 2]),
    ("position", {"latitude": 200, "longitude": "x"}),  # nothing usable
    ("position", {}),
])
def test_bad_values_are_rejected(param: str, value: object) -> None:
    with pytest.raises(ValueRejected):
        normalize(TABLE[param], value)


def test_position_keeps_good_fields_of_a_partly_bad_object() -> None:
    assert normalize(TABLE["position"], {"latitude": 91, "longitude": 10.5}) == {
        "longitude": 10.5}


def test_extra_parameters_pass_through_untyped() -> None:
    table = catalog.build(["custom.fuel.tank", "battery.level"])
    assert normalize(table["custom.fuel.tank"], {"a": 1}) == {"custom_fuel_tank": {"a": 1}}
    # a listed parameter that the catalogue knows keeps its catalogue row
    assert table["battery.level"] is TABLE["battery.level"]


# --- the wide catalogue: every row -----------------------------------------------------------

ROWS = [p for p in catalog.CATALOG
        if p.attribute is not None and p.attribute.name not in catalog.DEVICE_INFO]


def test_device_info_rows_make_no_entity() -> None:
    """Firmware and hardware versions are shown in the device info, not as entities."""
    rows = {p.attribute.name: p for p in catalog.CATALOG
            if p.attribute is not None and p.attribute.name in catalog.DEVICE_INFO}
    assert set(rows) == set(catalog.DEVICE_INFO)
    assert all(p.attribute is not None and p.attribute.component is None
               for p in rows.values())


@pytest.mark.parametrize("param", ROWS, ids=lambda p: p.flespi)
def test_every_row_is_valid_for_home_assistant(param: catalog.Parameter) -> None:
    attr = param.attribute
    assert attr is not None
    assert attr.component in ("sensor", "binary_sensor", "event")
    assert attr.label
    assert attr.name.isidentifier()
    assert ha_classes.problems(attr.component, attr.device_class, attr.unit,
                               attr.state_class, attr.type in ("int", "float")) == []
    assert attr.entity_category in (None, "diagnostic")
    if attr.component in ("binary_sensor", "event"):
        assert attr.type == "bool"
    if attr.component == "event":
        assert attr.events, "an event-only row makes events"
    for value, event_type in attr.events:
        assert isinstance(value, bool)
        assert event_type.isidentifier()


# the rows users chart most: (parameter) -> (attribute, type, unit, device class, state class)
EXPECTED = {
    "engine.ignition.status": ("ignition", "bool", None, None, None),
    "movement.status": ("movement", "bool", None, "moving", None),
    "vehicle.mileage": ("mileage", "float", "km", "distance", "total_increasing"),
    "can.vehicle.mileage": ("can_mileage", "float", "km", "distance", "total_increasing"),
    "engine.motorhours": ("engine_hours", "float", "h", "duration", "total_increasing"),
    "can.engine.motorhours": ("can_engine_hours", "float", "h", "duration",
                              "total_increasing"),
    "engine.rpm": ("rpm", "float", "rpm", None, "measurement"),
    "can.engine.rpm": ("can_rpm", "float", "rpm", None, "measurement"),
    "fuel.level": ("fuel_level", "float", "%", None, "measurement"),
    "can.fuel.level": ("can_fuel_level", "float", "%", None, "measurement"),
    "can.fuel.volume": ("can_fuel_volume", "float", "L", "volume_storage", "measurement"),
    "fuel.consumed": ("fuel_consumed", "float", "L", "volume", "total_increasing"),
    "can.fuel.consumed": ("can_fuel_consumed", "float", "L", "volume", "total_increasing"),
    "can.vehicle.speed": ("can_speed", "float", "km/h", "speed", "measurement"),
    "can.engine.temperature": ("engine_temperature", "float", "°C", "temperature",
                               "measurement"),
    "can.engine.coolant.temperature": ("coolant_temperature", "float", "°C", "temperature",
                                       "measurement"),
    "external.powersource.voltage": ("external_voltage", "float", "V", "voltage",
                                     "measurement"),
    "battery.voltage": ("voltage", "float", "V", "voltage", "measurement"),
    "din": ("din", "int", None, None, None),
    "din.1": ("din_1", "bool", None, None, None),
    "dout.2": ("dout_2", "bool", None, None, None),
    "ain.1": ("ain_1", "float", "V", "voltage", "measurement"),
    "towing.alarm.status": ("towing", "bool", None, "safety", None),
    "crash.event": ("crash", "bool", None, "safety", None),
    "alarm.event": ("alarm", "bool", None, "safety", None),
    "gnss.status": ("gnss", "bool", None, None, None),
    "position.satellites": ("satellites", "int", None, None, "measurement"),
    "gsm.operator.code": ("operator", "str", None, None, None),
    "gsm.signal.level": ("signal", "int", "%", None, "measurement"),
    "can.doors.status": ("doors", "bool", None, "door", None),
}


@pytest.mark.parametrize(("param", "expected"), EXPECTED.items())
def test_fleet_rows(param: str, expected: tuple[str | None, ...]) -> None:
    attr = TABLE[param].attribute
    assert attr is not None
    assert (attr.name, attr.type, attr.unit, attr.device_class, attr.state_class) == expected


@pytest.mark.parametrize(("param", "value", "expected"), [
    ("vehicle.mileage", 123456.7, 123456.7),
    ("engine.motorhours", 4321, 4321),
    ("fuel.level", 55.5, 55.5),
    ("can.engine.temperature", -12.5, -12.5),
    ("din", 3, 3),
    ("din.2", 1, True),
    ("gsm.operator.code", "73602", "73602"),
    ("position.satellites", 11, 11),
])
def test_fleet_values_normalize(param: str, value: object, expected: object) -> None:
    attr = TABLE[param].attribute
    assert attr is not None
    got = normalize(TABLE[param], value)[attr.name]
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(("param", "value"), [
    ("vehicle.mileage", -1),        # a counter is never negative
    ("fuel.level", 101),            # a percentage
    ("engine.ignition.status", "on"),
    ("gsm.operator.code", 73602),   # text, not a number
    ("can.engine.temperature", -300),  # below absolute zero
])
def test_fleet_values_rejected(param: str, value: object) -> None:
    with pytest.raises(ValueRejected):
        normalize(TABLE[param], value)


def test_parameters_page_table_is_the_catalogue() -> None:
    """docs/parameters.md's table is generated from the catalogue; regenerate it with
    `python tools/catalog_table.py --write`."""
    spec = importlib.util.spec_from_file_location("catalog_table",
                                                  REPO / "tools" / "catalog_table.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = module.PAGE.read_text(encoding="utf-8")
    assert module.PAGE == REPO / "docs" / "parameters.md"
    assert f"{module.START}\n{module.table()}\n{module.END}" in page, (
        "docs/parameters.md's table differs from bridge/normalize/catalog.py: run "
        "`python tools/catalog_table.py --write`")
    for param in catalog.CATALOG:
        assert f"| `{param.flespi}` |" in page
