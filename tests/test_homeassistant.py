"""Home Assistant discovery: payloads (pure) and their life cycle on a real broker."""

from __future__ import annotations

import asyncio
from typing import Any

import jinja2
import orjson
import pytest
from helpers import BridgeFactory, Recorder, make_settings

from bridge import catalog, mosquitto
from bridge.homeassistant import Context, Discovery, device_configs
from bridge.sim import Simulator
from bridge.state import Store

ATTRS = catalog.attributes(catalog.build())
PREFIX = "homeassistant"
BASE = "flespi"
CFG = f"{PREFIX}/+/{BASE}/+/config"

# Units Home Assistant accepts for each device class used here.
UNITS = {"battery": {"%"}, "voltage": {"V", "mV"}, "speed": {"km/h", "m/s", "mph"},
         "distance": {"m", "km"}, "timestamp": {None}, "battery_charging": {None},
         "lock": {None}, "moving": {None}, "connectivity": {None}, None: None}
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"},
            "device_tracker": {"json_attributes_topic"}}


def full_device(store: Store, device_id: int = 5537057) -> Any:
    store.apply_object(device_id, {"id": device_id, "name": "SomeName", "device_type_id": 1272,
                                   "protocol_id": 200, "configuration": {"ident": "0151360"}})
    store.apply_connected(device_id, True)
    values: dict[str, Any] = {}
    for param, value in [("battery.level", 70), ("battery.voltage", 4.09),
                         ("battery.charging.status", False), ("gsm.signal.level", 90),
                         ("lock.status", True), ("engine.ignition.status", True),
                         ("movement.status", False), ("external.powersource.voltage", 12.4),
                         ("position", {"latitude": -17.72436, "longitude": -63.171508,
                                       "altitude": 408.9, "hdop": 0.87, "satellites": 9,
                                       "valid": True, "speed": 12.5, "direction": 90})]:
        values.update(catalog.normalize(catalog.build()[param], value))
    store.apply_values(device_id, values, 1706905170.17258)
    return store.devices[device_id]


def render(template: str, state: dict[str, Any]) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(value_json=state)


def test_configs_cover_every_entity_with_valid_keys() -> None:
    dev = full_device(Store())
    ctx = Context(PREFIX, BASE)
    configs = device_configs(ctx, dev, ATTRS)
    by_uid = {c["unique_id"]: (t.split("/")[1], c) for t, c in configs.items()}
    expected = {"battery": "sensor", "voltage": "sensor", "charging": "binary_sensor",
                "signal": "sensor", "locked": "binary_sensor", "ignition": "binary_sensor",
                "movement": "binary_sensor", "external_voltage": "sensor",
                "altitude": "sensor", "hdop": "sensor", "satellites": "sensor",
                "speed": "sensor", "direction": "sensor", "position_valid": "binary_sensor",
                "last_seen": "sensor", "position": "device_tracker",
                "connectivity": "binary_sensor"}
    assert {uid: comp for uid, (comp, _) in by_uid.items()} == {
        f"flespi_5537057_{key}": comp for key, comp in expected.items()}
    state = dev.state()
    for topic, cfg in configs.items():
        component = topic.split("/")[1]
        assert topic == f"{PREFIX}/{component}/{BASE}/{cfg['unique_id']}/config"
        assert REQUIRED[component] <= set(cfg)
        assert cfg["device"]["identifiers"] == ["flespi_5537057"]
        assert cfg["device"]["name"] == "SomeName"
        assert cfg["device"]["model"] == "flespi device type 1272"
        assert cfg["device"]["via_device"] == "flespi_bridge_flespi"
        assert cfg["origin"]["name"] == "flespi-bridge"
        if cfg["unique_id"].endswith("_connectivity"):
            assert cfg["availability"] == [{"topic": f"{BASE}/bridge/state"}]
        else:
            assert cfg["availability_mode"] == "all"
            assert cfg["availability"] == [{"topic": f"{BASE}/bridge/state"},
                                           {"topic": f"{BASE}/5537057/availability"}]
        device_class = cfg.get("device_class")
        units = UNITS.get(device_class)
        if units is not None:
            assert cfg.get("unit_of_measurement") in units, cfg["unique_id"]
        if "value_template" in cfg:
            rendered = render(cfg["value_template"], state)
            if component == "binary_sensor":
                assert rendered in ("ON", "OFF")
            else:
                assert rendered not in ("", "None")
    battery = by_uid["flespi_5537057_battery"][1]
    assert (battery["name"], battery["device_class"], battery["state_class"],
            battery["unit_of_measurement"]) == ("Battery", "battery", "measurement", "%")
    assert render(battery["value_template"], state) == "70"
    # the lock device class is on=unlocked: a locked scooter renders OFF
    assert render(by_uid["flespi_5537057_locked"][1]["value_template"], state) == "OFF"
    assert by_uid["flespi_5537057_signal"][1]["entity_category"] == "diagnostic"
    assert by_uid["flespi_5537057_satellites"][1]["entity_category"] == "diagnostic"
    assert by_uid["flespi_5537057_connectivity"][1]["entity_category"] == "diagnostic"
    tracker = by_uid["flespi_5537057_position"][1]
    assert tracker["source_type"] == "gps"
    attrs = orjson.loads(render(tracker["json_attributes_template"], state))
    assert attrs["latitude"] == -17.72436
    assert attrs["longitude"] == -63.171508
    assert attrs["gps_accuracy"] == 4.3
    assert render(by_uid["flespi_5537057_last_seen"][1]["value_template"], state) == (
        "2024-02-02T20:19:30Z")


def test_attribute_output_uses_per_attribute_topics() -> None:
    dev = full_device(Store())
    configs = device_configs(Context(PREFIX, BASE, output="attribute", expire_after=600), dev,
                             ATTRS)
    by_uid = {c["unique_id"]: c for c in configs.values()}
    assert by_uid["flespi_5537057_battery"]["state_topic"] == f"{BASE}/5537057/battery"
    assert "value_template" not in by_uid["flespi_5537057_battery"]
    assert by_uid["flespi_5537057_battery"]["expire_after"] == 600
    charging = by_uid["flespi_5537057_charging"]
    assert (charging["payload_on"], charging["payload_off"]) == ("true", "false")
    locked = by_uid["flespi_5537057_locked"]
    assert (locked["payload_on"], locked["payload_off"]) == ("false", "true")
    assert by_uid["flespi_5537057_position"]["json_attributes_topic"] == (
        f"{BASE}/5537057/position")


def test_only_reported_attributes_become_entities() -> None:
    store = Store()
    store.apply_values(1, {"battery": 50}, 1.0)
    uids = {c["unique_id"] for c in device_configs(Context(PREFIX, BASE), store.devices[1],
                                                   ATTRS).values()}
    assert uids == {"flespi_1_battery", "flespi_1_last_seen"}


def test_discovery_diff_republishes_changes_and_clears_leftovers() -> None:
    store = Store()
    dev = full_device(store)
    ctx = Context(PREFIX, BASE)
    disco = Discovery(ctx)
    first = disco.update(dev, device_configs(ctx, dev, ATTRS))
    assert first
    assert all(p.payload for p in first)
    assert disco.update(dev, device_configs(ctx, dev, ATTRS)) == []  # nothing changed
    store.apply_name(dev.id, "Renamed")
    renamed = disco.update(dev, device_configs(ctx, dev, ATTRS))
    assert len(renamed) == len(first)
    assert {orjson.loads(p.payload)["unique_id"] for p in renamed} == {
        orjson.loads(p.payload)["unique_id"] for p in first}
    fewer = {t: c for t, c in device_configs(ctx, dev, ATTRS).items()
             if not c["unique_id"].endswith("_battery")}
    cleared = [p for p in disco.update(dev, fewer) if not p.payload]
    assert [p.topic for p in cleared] == [f"{PREFIX}/sensor/{BASE}/flespi_{dev.id}_battery/config"]
    assert {p.topic for p in disco.forget(dev.id)} == set(fewer)


# -- on a real broker ---------------------------------------------------------------------

def expected_uids(sim: Simulator) -> set[str]:
    keys = {"battery", "voltage", "charging", "signal", "locked", "altitude", "hdop",
            "satellites", "speed", "direction", "position_valid", "last_seen", "position",
            "connectivity"}
    return {f"flespi_{d}_{k}" for d in sim.devices for k in keys}


def live_configs(rec: Recorder) -> dict[str, dict[str, Any]]:
    return {t: m.json() for t, m in rec.latest.items()
            if t.startswith(f"{PREFIX}/") and t.endswith("/config") and m.payload}


def device_uids(rec: Recorder) -> set[str]:
    return {c["unique_id"] for c in live_configs(rec).values()
            if not c["unique_id"].startswith("flespi_bridge")}


async def retained_configs(local: mosquitto.Broker) -> dict[str, dict[str, Any]]:
    """What a Home Assistant starting now would find: retained configs only."""
    async with Recorder(local, [CFG, f"{BASE}/bridge/state"]) as rec:
        await rec.wait_for(lambda: f"{BASE}/bridge/state" in rec.latest)
        return {t: m.json() for t, m in rec.latest.items() if t.endswith("/config")}


async def test_fleet_is_announced_once_per_entity(upstream: mosquitto.Broker,
                                                  local: mosquitto.Broker, sim: Simulator,
                                                  bridge_factory: BridgeFactory) -> None:
    async with Recorder(local, [CFG, f"{BASE}/+/state"]) as rec:
        await bridge_factory(make_settings(upstream, local))
        want = expected_uids(sim)
        await rec.wait_for(lambda: device_uids(rec) == want, what="all configs")
    configs = await retained_configs(local)
    uids = [c["unique_id"] for c in configs.values()]
    assert len(uids) == len(set(uids))  # exactly one config per entity
    assert set(uids) == want | {"flespi_bridge_flespi_connection"}


async def test_status_online_triggers_full_republish(upstream: mosquitto.Broker,
                                                     local: mosquitto.Broker, sim: Simulator,
                                                     bridge_factory: BridgeFactory) -> None:
    settings = make_settings(upstream, local, homeassistant={"status_delay": 0.2})
    async with Recorder(local, [CFG, f"{BASE}/+/state"]) as rec:
        await bridge_factory(settings)
        want = expected_uids(sim)
        await rec.wait_for(lambda: device_uids(rec) == want, what="all configs")
        await asyncio.sleep(0)  # let nothing else be pending
        start = len(rec.messages)
        await rec.publish(f"{PREFIX}/status", "online")

        def republished() -> bool:
            new = rec.messages[start:]
            uids = {m.json()["unique_id"] for m in new if m.topic.endswith("/config")}
            states = {m.topic for m in new if m.topic.endswith("/state")}
            return uids >= want and len(states) >= len(sim.devices)

        await rec.wait_for(republished, what="republish after HA online")


async def test_deleted_device_is_cleared(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                         sim: Simulator, bridge_factory: BridgeFactory) -> None:
    gone = next(iter(sim.devices))
    async with Recorder(local, [CFG, f"{BASE}/+/+"]) as rec:
        await bridge_factory(make_settings(upstream, local))
        await rec.wait_for(lambda: device_uids(rec) == expected_uids(sim), what="configs")
        await sim.delete(gone)
        await rec.wait_for(lambda: not any(f"_{gone}_" in u for u in device_uids(rec)),
                           what="configs cleared")
        await rec.wait_for(lambda: f"{BASE}/{gone}/state" not in rec.latest, what="state")
    configs = await retained_configs(local)
    assert not any(f"_{gone}_" in c["unique_id"] for c in configs.values())


async def test_removed_from_selection_and_ghosts_are_cleared_on_restart(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    ids = list(sim.devices)
    await sim.set_values(ids[0], {"can.fuel.level": 40.0})
    first = await bridge_factory(make_settings(
        upstream, local, flespi={"extra_parameters": ["can.fuel.level"]}))
    async with Recorder(local, [CFG]) as rec:
        want = expected_uids(sim)
        await rec.wait_for(lambda: device_uids(rec) == want, what="first run configs")
        # a config left by some earlier version under this bridge's node id: a ghost
        await rec.publish(f"{PREFIX}/sensor/{BASE}/flespi_{ids[0]}_odometer/config",
                          orjson.dumps({"unique_id": f"flespi_{ids[0]}_odometer"}), qos=1,
                          retain=True)
        # someone else's config under another node id is not ours to touch
        await rec.publish(f"{PREFIX}/sensor/other/x_battery/config",
                          orjson.dumps({"unique_id": "x_battery"}), qos=1, retain=True)
    await first.stop()
    # Second run: one device dropped from the selection, the extra parameter no longer listed.
    second = make_settings(upstream, local, flespi={"devices": ids[1:]})
    bridge = await bridge_factory(second)
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    kept = {f"flespi_{d}_{k}" for d in ids[1:] for k in
            ("battery", "voltage", "charging", "signal", "locked", "altitude", "hdop",
             "satellites", "speed", "direction", "position_valid", "last_seen", "position",
             "connectivity")}
    async with Recorder(local, [f"{PREFIX}/#", f"{BASE}/+/+"]) as rec:
        def settled() -> bool:
            uids = [m.json()["unique_id"] for t, m in rec.latest.items()
                    if t.endswith("/config") and m.payload]
            return sorted(uids) == sorted(kept | {"flespi_bridge_flespi_connection",
                                                  "x_battery"})
        await rec.wait_for(settled, what="exactly one config per live entity")
        await rec.wait_for(lambda: f"{BASE}/{ids[0]}/state" not in rec.latest,
                           what="dropped device's state cleared")
    configs = await retained_configs(local)  # this bridge's node id only
    uids = [c["unique_id"] for c in configs.values()]
    assert len(uids) == len(set(uids))
    assert set(uids) == kept | {"flespi_bridge_flespi_connection"}


async def test_rename_keeps_unique_ids(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                       sim: Simulator, bridge_factory: BridgeFactory) -> None:
    device_id = list(sim.devices)[2]
    async with Recorder(local, [CFG]) as rec:
        await bridge_factory(make_settings(upstream, local))
        await rec.wait_for(lambda: device_uids(rec) == expected_uids(sim), what="configs")
        before = {t: c["unique_id"] for t, c in live_configs(rec).items()}
        await sim.rename(device_id, "Renamed / scooter #1")

        def renamed() -> bool:
            mine = [c for c in live_configs(rec).values()
                    if c["unique_id"].startswith(f"flespi_{device_id}_")]
            return bool(mine) and all(c["device"]["name"] == "Renamed / scooter #1"
                                      for c in mine)

        await rec.wait_for(renamed, what="device renamed in discovery")
        after = {t: c["unique_id"] for t, c in live_configs(rec).items()}
        assert after == before


async def test_include_exclude_and_discovery_off(upstream: mosquitto.Broker,
                                                 local: mosquitto.Broker, sim: Simulator,
                                                 bridge_factory: BridgeFactory) -> None:
    ids = list(sim.devices)
    settings = make_settings(upstream, local, homeassistant={"exclude": [ids[0]]})
    async with Recorder(local, [CFG, f"{BASE}/+/state"]) as rec:
        await bridge_factory(settings)
        want = {u for u in expected_uids(sim) if not u.startswith(f"flespi_{ids[0]}_")}
        await rec.wait_for(lambda: device_uids(rec) == want, what="configs")
        await rec.wait_for(lambda: rec.state(BASE, ids[0]), what="excluded device's state")


@pytest.mark.parametrize("output", ["attribute", "both"])
async def test_attribute_output(upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
                                bridge_factory: BridgeFactory, output: str) -> None:
    device_id = next(iter(sim.devices))
    dev = sim.devices[device_id]
    async with Recorder(local, [f"{BASE}/{device_id}/+"]) as rec:
        await bridge_factory(make_settings(upstream, local, local={"output": output}))
        topic = f"{BASE}/{device_id}/battery"
        leaves = ("battery", "locked", "last_seen", "position")
        await rec.wait_for(lambda: all(f"{BASE}/{device_id}/{leaf}" in rec.latest
                                       for leaf in leaves), what="attribute topics")
        assert rec.latest[topic].payload == str(dev.value("battery.level")).encode()
        assert rec.latest[f"{BASE}/{device_id}/locked"].payload == b"true"
        assert rec.latest[f"{BASE}/{device_id}/last_seen"].payload.endswith(b"Z")
        position = rec.latest[f"{BASE}/{device_id}/position"].json()
        assert position["latitude"] == dev.value("position")["latitude"]
        if output == "both":
            await rec.wait_for(lambda: f"{BASE}/{device_id}/state" in rec.latest, what="state")
        else:
            assert f"{BASE}/{device_id}/state" not in rec.latest


async def test_full_messages_are_republished_when_enabled(upstream: mosquitto.Broker,
                                                          local: mosquitto.Broker, sim: Simulator,
                                                          bridge_factory: BridgeFactory) -> None:
    device_id = list(sim.devices)[1]
    bridge = await bridge_factory(make_settings(upstream, local, flespi={"messages": True}))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    topic = f"{BASE}/{device_id}/message"
    async with Recorder(local, [topic]) as rec:
        values = await sim.step(sim.devices[device_id])
        msg = await rec.wait_for(lambda: rec.latest.get(topic), what="message")
        assert not msg.retain
        body = msg.json()
        assert body["battery.level"] == values["battery.level"]
        assert body["device.id"] == device_id
        assert body["position.latitude"] == values["position.latitude"]
