"""A van's parameters end to end, on real brokers: simulator -> upstream Mosquitto -> bridge
-> local Mosquitto, read as Home Assistant reads it (discovery configs and states), and as
Prometheus reads the metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.helpers import BridgeFactory, Recorder, make_settings, wait_metric

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

BASE = "flespi"
PREFIX = "homeassistant"
P = "flespi_bridge_"


@pytest.fixture
async def vans(upstream: mosquitto.Broker) -> AsyncIterator[Simulator]:
    simulator = Simulator(upstream.host, upstream.port, devices=2, seed=5, kind="vans")
    await simulator.start()
    yield simulator
    await simulator.stop()


def having(rec: Recorder, device_id: int, keys: set[str] | Any
           ) -> dict[str, dict[str, Any]] | None:
    """The device's entities once `keys` are all among them."""
    cmps = components(rec, device_id)
    return cmps if set(keys) <= cmps.keys() else None


def components(rec: Recorder, device_id: int) -> dict[str, dict[str, Any]]:
    item = rec.latest.get(f"{PREFIX}/device/{BASE}/flespi_{device_id}/config")
    cmps: dict[str, dict[str, Any]] = item.json()["cmps"] if item else {}
    return {k: v for k, v in cmps.items() if len(v) > 1}  # removed ones are {"p": ...}


# what Home Assistant must show for a van: entity -> (platform, unit, device class,
# state class)
VAN_ENTITIES = {
    "ignition": ("binary_sensor", None, None, None),
    "movement": ("binary_sensor", None, "moving", None),
    "mileage": ("sensor", "km", "distance", "total_increasing"),
    "engine_hours": ("sensor", "h", "duration", "total_increasing"),
    "can_rpm": ("sensor", "rpm", None, "measurement"),
    "can_speed": ("sensor", "km/h", "speed", "measurement"),
    "engine_temperature": ("sensor", "°C", "temperature", "measurement"),
    "fuel_level": ("sensor", "%", None, "measurement"),
    "fuel_consumed": ("sensor", "L", "volume", "total_increasing"),
    "external_voltage": ("sensor", "V", "voltage", "measurement"),
    "voltage": ("sensor", "V", "voltage", "measurement"),
    "din": ("sensor", None, None, None),
    "din_1": ("binary_sensor", None, None, None),
    "din_2": ("binary_sensor", None, None, None),
    "dout": ("sensor", None, None, None),
    "dout_1": ("binary_sensor", None, None, None),
    "towing": ("binary_sensor", None, "safety", None),
    "crash": ("binary_sensor", None, "safety", None),
    "alarm": ("binary_sensor", None, "safety", None),
    "gnss": ("binary_sensor", None, None, None),
    "signal": ("sensor", "%", None, "measurement"),
    "operator": ("sensor", None, None, None),
    "satellites": ("sensor", None, None, "measurement"),
    "speed": ("sensor", "km/h", "speed", "measurement"),
    "position": ("device_tracker", None, None, None),
    "connectivity": ("binary_sensor", None, "connectivity", None),
    "last_seen": ("sensor", None, "timestamp", None),
}


async def test_a_simulated_van_comes_out_in_home_assistant_discovery(
        upstream: mosquitto.Broker, local: mosquitto.Broker, vans: Simulator,
        bridge_factory: BridgeFactory) -> None:
    van = next(iter(vans.devices.values()))
    async with Recorder(local, [f"{PREFIX}/#", f"{BASE}/#"]) as rec:
        await bridge_factory(make_settings(upstream, local))
        cmps = await rec.wait_for(
            lambda: having(rec, van.id, VAN_ENTITIES.keys()),
            what="the van's entities")
        for key, (platform, unit, device_class, state_class) in VAN_ENTITIES.items():
            cfg = cmps[key]
            assert (cfg["p"], cfg.get("unit_of_measurement"), cfg.get("device_class"),
                    cfg.get("state_class")) == (platform, unit, device_class, state_class), key
        assert cmps["operator"]["entity_category"] == "diagnostic"
        assert cmps["mileage"]["value_template"] == "{{ value_json.mileage }}"
        # the state says what the van's tracker says
        state = await rec.wait_for(lambda: rec.state(BASE, van.id), what="state")
        assert state["mileage"] == van.value("vehicle.mileage")
        assert state["fuel_level"] == van.value("fuel.level")
        assert state["ignition"] is van.value("engine.ignition.status")
        assert state["operator"] == "73602"
        # driving on: mileage only grows, and the state follows the van
        before = van.value("vehicle.mileage")
        for _ in range(30):
            await vans.step(van)
        await vans.flush()
        after = van.value("vehicle.mileage")
        assert after >= before
        await rec.wait_for(lambda: (s := rec.state(BASE, van.id)) is not None
                           and s["mileage"] == after
                           and s["engine_hours"] == van.value("engine.motorhours"),
                           what="the state after driving on")
        # the connection: attributes of the connectivity entity
        assert cmps["connectivity"]["json_attributes_topic"] == f"{BASE}/{van.id}/connections"
        conns = (await rec.wait_for(lambda: rec.latest.get(f"{BASE}/{van.id}/connections"),
                                    what="connections")).json()
        assert conns["count"] == 1
        assert (conns["transport"], conns["secondary"]) == ("tcp", False)
        assert conns["source"] == van.connection()["source"]
        assert conns["established"] == "2024-02-02T12:31:38Z"
        assert conns["connections"][0]["id"] == van.connection_id
        # the van disconnects: flespi drops the connection object, the attributes follow
        await vans.set_connected(van.id, False)
        await rec.wait_for(lambda: rec.latest[f"{BASE}/{van.id}/connections"].json()
                           == {"connections": [], "count": 0}, what="no connection left")


async def test_all_parameters_become_entities_by_the_rules(
        upstream: mosquitto.Broker, local: mosquitto.Broker, vans: Simulator,
        bridge_factory: BridgeFactory) -> None:
    """`flespi.parameters = "all"`: parameters outside the catalogue become entities by
    their names; diagnostics disabled; objects and arrays skipped and counted; overrides
    apply to catalogue and rule-made parameters alike; fleet metrics take rule-made ones."""
    van = next(iter(vans.devices.values()))
    await vans.set_values(van.id, {
        "can.engine.oil.temperature.2": 96.5, "can.hood.status": False,
        "custom.io.77": 5, "acceleration.array": [{"x": 0.1}],
        "can.tracker.counted.mileage": 1234.5, "custom.param.10800": 41.5,
    })
    await vans.flush()
    settings = make_settings(upstream, local, flespi={
        "parameters": "all",
        "overrides": {
            "fuel.level": {"label": "Tank", "attribute": "tank"},
            "custom.param.10800": {"label": "Probe", "unit": "L",
                                   "device_class": "volume_storage",
                                   "state_class": "measurement", "enabled_by_default": True},
            "gsm.operator.code": {"ignore": True},
        }}, metrics={"fleet_parameters": ["mileage", "can_tracker_counted_mileage"]})
    async with Recorder(local, [f"{PREFIX}/#", f"{BASE}/+/state"]) as rec:
        bridge = await bridge_factory(settings)
        wanted = {"can_engine_oil_temperature_2", "can_hood_status", "custom_io_77",
                  "can_tracker_counted_mileage", "custom_param_10800", "tank", "mileage"}
        cmps = await rec.wait_for(
            lambda: having(rec, van.id, wanted),
            what="rule-made entities", timeout=5)
        oil = cmps["can_engine_oil_temperature_2"]
        assert (oil["p"], oil["name"], oil["unit_of_measurement"], oil["device_class"]) == (
            "sensor", "CAN engine oil temperature 2", "°C", "temperature")
        assert "enabled_by_default" not in oil
        hood = cmps["can_hood_status"]
        assert (hood["p"], hood["device_class"]) == ("binary_sensor", "opening")
        io = cmps["custom_io_77"]
        assert (io["enabled_by_default"], io["entity_category"]) == (False, "diagnostic")
        assert "unit_of_measurement" not in io
        assert "state_class" not in io
        counted = cmps["can_tracker_counted_mileage"]
        assert (counted["unit_of_measurement"], counted["state_class"]) == (
            "km", "total_increasing")
        probe = cmps["custom_param_10800"]
        assert (probe["name"], probe["unit_of_measurement"], probe["device_class"]) == (
            "Probe", "L", "volume_storage")
        assert probe.get("enabled_by_default", True) is True
        assert cmps["tank"]["name"] == "Tank"
        assert "fuel_level" not in cmps
        assert "operator" not in cmps  # ignored
        assert not any("acceleration" in k or k in ("ident", "timestamp") for k in cmps)

        def with_tank() -> dict[str, Any] | None:
            found = rec.state(BASE, van.id)
            return found if found is not None and "tank" in found else None
        state = await rec.wait_for(with_tank, what="state")
        assert state["custom_io_77"] == 5
        assert state["tank"] == van.value("fuel.level")
        assert "operator" not in state
        assert "acceleration_array" not in state
    assert bridge.health is not None
    port = bridge.health.port
    await wait_metric(port, P + "skipped_parameters_total", lambda v: v >= 1,
                      reason="no_entity")
    await wait_metric(port, P + "skipped_parameters_total", lambda v: v >= 1, reason="ignored")
    # km are exported as metres, for the catalogue's attribute and a rule-made one alike
    await wait_metric(port, P + "device_can_tracker_counted_mileage_meters",
                      lambda v: v == 1234.5 * 1000, device_id=str(van.id))
    await wait_metric(port, P + "device_mileage_meters",
                      lambda v: v == pytest.approx(van.value("vehicle.mileage") * 1000),
                      device_id=str(van.id))
