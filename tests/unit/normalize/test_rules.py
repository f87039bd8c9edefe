"""The naming rules for parameters outside the catalogue, the active parameter table
(`Parameters`) and the per-parameter overrides: one test per rule, property tests that no
name or value crashes them."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.normalize import catalog, ha_classes, rules
from bridge.normalize.catalog import Attribute
from bridge.normalize.overrides import ParameterOverride
from bridge.normalize.parameters import MAX_RULE_MADE, Parameters


def made(name: str, value: Any, taken: frozenset[str] = frozenset()) -> Attribute:
    attr = rules.rule_attribute(name, value, taken)
    assert isinstance(attr, Attribute), attr
    return attr


# (name, first value) -> (component, type, unit, device class, state class)
RULES = [
    ("can.hood.status", True, ("binary_sensor", "bool", None, "opening", None)),
    ("engine.working.status", False, ("binary_sensor", "bool", None, None, None)),
    ("can.front.left.door.status", True, ("binary_sensor", "bool", None, "door", None)),
    # events: an event entity (and device triggers), no binary sensor
    ("harsh.braking.event", True, ("event", "bool", None, None, None)),
    ("panic.alarm.status", True, ("event", "bool", None, None, None)),
    ("geofence.depot.status", True, ("binary_sensor", "bool", None, "presence", None)),
    ("can.vehicle.battery.voltage", 12.7, ("sensor", "float", "V", "voltage", "measurement")),
    ("can.engine.oil.pressure", 310, ("sensor", "float", "kPa", "pressure", "measurement")),
    ("ain.3", 3.3, ("sensor", "float", "V", "voltage", "measurement")),
    ("can.intake.air.temperature", 31, ("sensor", "float", "°C", "temperature",
                                        "measurement")),
    ("ble.sensor.temperature.2", -4.5, ("sensor", "float", "°C", "temperature",
                                        "measurement")),
    ("can.tracker.fuel.level", 55, ("sensor", "float", "%", None, "measurement")),
    ("gnss.vehicle.mileage", 1234.5, ("sensor", "float", "km", "distance",
                                      "total_increasing")),
    ("actual.remaining.mileage", 300, ("sensor", "float", "km", "distance", "measurement")),
    ("can.wheel.speed", 42.0, ("sensor", "float", "km/h", "speed", "measurement")),
    ("engine.ignition.on.duration", 3600, ("sensor", "float", "s", "duration",
                                           "measurement")),
    ("can.engine.hours", 5000.5, ("sensor", "float", "h", "duration", "total_increasing")),
    ("can.tracker.counted.fuel.consumed", 812.3, ("sensor", "float", "L", "volume",
                                                  "total_increasing")),
    ("passengers.count", 3, ("sensor", "int", None, None, "measurement")),
    ("can.engine.torque", 310, ("sensor", "float", None, None, None)),  # unknown shape
    ("driver.name", "Ana", ("sensor", "str", None, None, None)),
    ("can.gear.enum", 3, ("sensor", "float", None, None, None)),  # a code, not a measure
]


@pytest.mark.parametrize(("name", "value", "expected"), RULES)
def test_rule(name: str, value: Any, expected: tuple[Any, ...]) -> None:
    attr = made(name, value)
    assert (attr.component, attr.type, attr.unit, attr.device_class,
            attr.state_class) == expected
    assert attr.name == rules.attribute_name(name)
    # whatever a rule makes, Home Assistant takes
    assert ha_classes.problems(attr.component or "sensor", attr.device_class, attr.unit,
                               attr.state_class, attr.type in ("int", "float")) == []


@pytest.mark.parametrize(("name", "label"), [
    ("din.5", "Digital input 5"),
    ("dout.2", "Digital output 2"),
    ("can.engine.coolant.temperature", "CAN engine coolant temperature"),
    ("towing.alarm.status", "Towing alarm"),
    ("gsm.cellid", "GSM cell ID"),
    ("ble.sensor.temperature.2", "BLE sensor temperature 2"),
    ("status", "Status"),
])
def test_labels_are_the_tags_in_words(name: str, label: str) -> None:
    assert rules.label(name) == label


def test_numbered_inputs_are_binary_sensors_of_their_own() -> None:
    five = made("din.5", True)
    assert (five.name, five.label, five.component) == ("din_5", "Digital input 5",
                                                       "binary_sensor")


@pytest.mark.parametrize(("name", "expected"), [
    ("can.engine.oil.pressure", "can_engine_oil_pressure"),
    ("custom.param.10800", "custom_param_10800"),
    ("Weird--Name..x", "weird_name_x"),
    ("5.volts", "p_5_volts"),
])
def test_attribute_names_are_the_flespi_name_made_safe(name: str, expected: str) -> None:
    assert rules.attribute_name(name) == expected


def test_a_taken_or_reserved_name_gets_a_stable_suffix() -> None:
    taken = {"ignition"}
    first = rules.attribute_name("ignition", taken)
    assert first.startswith("ignition_")
    assert first != "ignition"
    assert rules.attribute_name("ignition", taken) == first  # the same on every run
    for reserved in ("state", "position", "items", "values", "last_seen"):
        assert rules.attribute_name(reserved) != reserved
    # two flespi names that look alike still get different attributes when one is taken
    assert rules.attribute_name("a.b", {"a_b"}) != rules.attribute_name("a_b", {"a_b"})


def test_diagnostics_are_disabled_by_default() -> None:
    for name in ("gsm.cellid", "gnss.state.enum", "custom.param.77", "device.model",
                 "can.gear.enum"):
        attr = made(name, 3)
        assert attr.entity_category == "diagnostic", name
        assert attr.enabled_by_default is False, name
    for name in ("can.engine.hours", "din.3", "fuel.tank.level"):
        attr = made(name, 3)
        assert attr.entity_category is None
        assert attr.enabled_by_default, name
    # a source prefix (custom, io) with a tag that says what the value is: a main entity
    for name, value in (("custom.door", True), ("io.battery.voltage", 12.1)):
        attr = made(name, value)
        assert (attr.entity_category, attr.enabled_by_default) == (None, True), name


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("acceleration.array", [{"x": 1}], rules.NO_ENTITY),
    ("ble.beacons", {"id": "a"}, rules.NO_ENTITY),
    ("ident", "352625333222111", rules.METADATA),
    ("timestamp", 1706905170.2, rules.METADATA),
    ("device.type.id", 1272, rules.METADATA),
    ("position.latitude", -17.7, rules.DUPLICATE),
])
def test_what_makes_no_entity(name: str, value: Any, reason: str) -> None:
    assert rules.rule_attribute(name, value) == reason


def test_null_decides_nothing() -> None:
    assert rules.rule_attribute("can.engine.torque", None) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8)
names = st.text(max_size=80) | st.lists(
    st.sampled_from(["can", "fuel", "level", "status", "temperature", "1", "sensor", "id",
                     "mileage", "x", "", "é", "gsm", "count"]), max_size=6).map(".".join)


@settings(max_examples=500, deadline=None)
@given(name=names, value=json_values)
def test_no_name_or_value_crashes_the_rules(name: str, value: Any) -> None:
    result = rules.rule_attribute(name, value, {"battery", "ignition"})
    if isinstance(result, Attribute):
        assert result.name.isidentifier()
        assert result.name.isascii()
        assert 0 < len(result.name) <= rules.MAX_ATTRIBUTE
        assert result.name not in rules.RESERVED | {"battery", "ignition"}
        assert result.label
        # the value normalizes or is rejected with a reason, never anything else
        with contextlib.suppress(catalog.ValueRejected):
            catalog.normalize(catalog.Parameter(name, result), value)
    else:
        assert result is None or result in rules.SKIP_REASONS


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.tuples(names, json_values), max_size=20))
def test_no_stream_of_parameters_crashes_the_table(values: list[tuple[str, Any]]) -> None:
    params = Parameters(all_parameters=True)
    for name, value in values:
        got = params.resolve(name, value)
        if isinstance(got, catalog.Parameter):
            assert params.resolve(name, value) is got  # decided once
            assert got.attribute is not None
            assert params.attributes[got.attribute.name] is got.attribute or (
                got.flespi in catalog.build())
    names_ = [p.attribute.name for p in params.table.values()
              if p.attribute is not None and p.flespi not in catalog.build()]
    assert len(names_) == len(set(names_))  # one attribute per rule-made parameter


def test_parameters_take_only_the_catalogue_unless_all() -> None:
    closed = Parameters()
    assert closed.resolve("can.engine.torque", 300) is None
    assert "can.engine.torque" not in closed.table
    assert "vehicle.mileage" in (closed.subscribed() or [])
    opened = Parameters(all_parameters=True)
    assert opened.subscribed() is None
    torque = opened.resolve("can.engine.torque", 300)
    assert isinstance(torque, catalog.Parameter)
    assert opened.attributes["can_engine_torque"] is torque.attribute
    assert catalog.normalize(torque, 310) == {"can_engine_torque": 310}


def test_rule_made_parameters_are_capped() -> None:
    params = Parameters(all_parameters=True)
    for i in range(MAX_RULE_MADE):
        assert isinstance(params.resolve(f"custom.param.{i}", i), catalog.Parameter)
    assert params.resolve("custom.param.one.more", 1) == rules.LIMIT
    assert params.skipped["custom.param.one.more"] == rules.LIMIT


# --- overrides ------------------------------------------------------------------------------

def test_an_override_changes_a_catalogue_row() -> None:
    params = Parameters(overrides_={"can.engine.temperature": ParameterOverride(
        attribute="coolant", label="Coolant", entity_category="diagnostic",
        enabled_by_default=False)})
    attr = params.table["can.engine.temperature"].attribute
    assert attr is not None
    assert (attr.name, attr.label, attr.unit, attr.device_class, attr.entity_category,
            attr.enabled_by_default) == ("coolant", "Coolant", "°C", "temperature",
                                         "diagnostic", False)
    assert params.attributes["coolant"] is attr
    assert "engine_temperature" not in params.attributes


def test_none_removes_and_component_changes_the_type() -> None:
    params = Parameters(overrides_={
        "vehicle.mileage": ParameterOverride(state_class="none", device_class="none",
                                             unit="none"),
        "din": ParameterOverride(component="binary_sensor", label="Input active"),
    })
    mileage = params.table["vehicle.mileage"].attribute
    assert mileage is not None
    assert (mileage.unit, mileage.device_class, mileage.state_class) == (None, None, None)
    din = params.table["din"].attribute
    assert din is not None
    assert (din.component, din.type) == ("binary_sensor", "bool")
    assert catalog.normalize(params.table["din"], 1) == {"din": True}


def test_an_override_makes_a_parameter_outside_the_catalogue_known() -> None:
    params = Parameters(overrides_={"custom.param.10800": ParameterOverride(
        label="Tank probe", unit="L", device_class="volume_storage",
        state_class="measurement")})
    assert "custom.param.10800" in (params.subscribed() or [])
    assert params.wants("custom.param.10800")
    assert not params.wants("custom.param.1")
    probe = params.resolve("custom.param.10800", 41.5)
    assert isinstance(probe, catalog.Parameter)
    assert probe.attribute is not None
    assert (probe.attribute.label, probe.attribute.unit, probe.attribute.device_class) == (
        "Tank probe", "L", "volume_storage")


def test_an_override_of_a_text_parameter_keeps_its_label_and_drops_unit_and_statistics(
) -> None:
    """Home Assistant refuses a unit or state class on a text sensor: a text value that an
    override gave them keeps everything else the override says."""
    params = Parameters(overrides_={"custom.status.text": ParameterOverride(
        label="Status", unit="V", state_class="measurement", entity_category="diagnostic")})
    made = params.resolve("custom.status.text", "ok")
    assert isinstance(made, catalog.Parameter)
    assert made.attribute is not None
    attr = made.attribute
    assert (attr.type, attr.unit, attr.state_class) == ("str", None, None)
    assert (attr.label, attr.entity_category, attr.component) == ("Status", "diagnostic",
                                                                  "sensor")


def test_ignore_drops_a_parameter() -> None:
    params = Parameters(overrides_={"gsm.operator.code": ParameterOverride(ignore=True)},
                        all_parameters=True)
    assert "gsm.operator.code" not in params.table
    assert params.resolve("gsm.operator.code", "73602") == rules.IGNORED
    assert "operator" not in params.attributes


def test_rule_made_metric_units() -> None:
    from bridge.http.metrics import fleet_metric_name

    assert fleet_metric_name(made("gnss.vehicle.mileage", 1.0)).endswith("_meters")
    assert fleet_metric_name(made("can.engine.hours", 1.0)).endswith("_seconds")
    assert fleet_metric_name(made("can.intake.air.temperature", 1.0)).endswith("_celsius")
    assert not math.isnan(1.0)
