"""The parameter catalogue: mapping and validation of flespi values."""

from __future__ import annotations

import math

import pytest

from bridge import catalog
from bridge.catalog import ValueRejected, normalize

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
    table = catalog.build(["custom.fuel.gauge", "battery.level"])
    assert normalize(table["custom.fuel.gauge"], {"a": 1}) == {"custom_fuel_gauge": {"a": 1}}
    # a listed parameter that the catalogue knows keeps its catalogue row
    assert table["battery.level"] is TABLE["battery.level"]
