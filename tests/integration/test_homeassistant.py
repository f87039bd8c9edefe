"""Home Assistant discovery: payloads (pure) and their life cycle on a real broker."""

from __future__ import annotations

import asyncio
from typing import Any

import jinja2
import orjson
import pytest
from support.helpers import BridgeFactory, Recorder, make_settings

from bridge.core.store import Store
from bridge.homeassistant.discovery import Discovery
from bridge.homeassistant.payloads import MIGRATE, Context, device_configs, device_owner
from bridge.normalize import catalog
from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

ATTRS = catalog.attributes(catalog.build())
PREFIX = "homeassistant"
BASE = "flespi"
CFG = f"{PREFIX}/+/{BASE}/+/config"

# Units Home Assistant accepts for each device class used here.
UNITS = {"battery": {"%"}, "voltage": {"V", "mV"}, "speed": {"km/h", "m/s", "mph"},
         "distance": {"m", "km"}, "timestamp": {None}, "battery_charging": {None},
         "lock": {None}, "moving": {None}, "connectivity": {None}, None: None}
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"},
            "device_tracker": {"json_attributes_topic"},
            "event": {"state_topic", "event_types"},
            "device_automation": {"automation_type", "topic", "type", "subtype"}}


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


def entities(configs: dict[str, dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """unique_id -> (platform, config) as Home Assistant reads either layout: a device
    config's components inherit its device, origin and shared availability."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for topic, cfg in configs.items():
        if not cfg or "migrate_discovery" in cfg:
            continue  # a removal, or a hand-over in progress
        if "cmps" not in cfg:
            out[cfg["unique_id"]] = (topic.split("/")[1], cfg)
            continue
        shared = {k: v for k, v in cfg.items() if k in ("availability", "availability_mode")}
        for comp in cfg["cmps"].values():
            if len(comp) == 1:
                continue  # {"p": ...}: a removal
            merged = {**shared, **comp, "device": cfg["dev"], "origin": cfg["o"]}
            out[comp["unique_id"]] = (merged.pop("p"), merged)
    return out


def render(template: str, state: dict[str, Any]) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(value_json=state)


@pytest.mark.parametrize("mode", ["device", "entity"])
def test_configs_cover_every_entity_with_valid_keys(mode: str) -> None:
    dev = full_device(Store())
    ctx = Context(PREFIX, BASE, mode=mode)
    configs = device_configs(ctx, dev, ATTRS)
    if mode == "device":
        assert list(configs) == [f"{PREFIX}/device/{BASE}/flespi_5537057/config"]
    by_uid = entities(configs)
    expected = {"battery": "sensor", "voltage": "sensor", "charging": "binary_sensor",
                "signal": "sensor", "locked": "binary_sensor", "ignition": "binary_sensor",
                "movement": "binary_sensor", "external_voltage": "sensor",
                "altitude": "sensor", "hdop": "sensor", "satellites": "sensor",
                "speed": "sensor", "direction": "sensor", "position_valid": "binary_sensor",
                "last_seen": "sensor", "position": "device_tracker",
                "connectivity": "binary_sensor",
                # the ignition's changes as events, and a device trigger for each
                "ignition_event": "event", "ignition_on_trigger": "device_automation",
                "ignition_off_trigger": "device_automation"}
    assert {uid: comp for uid, (comp, _) in by_uid.items()} == {
        f"flespi_5537057_{key}": comp for key, comp in expected.items()}
    state = dev.state()
    for uid, (component, cfg) in by_uid.items():
        if mode == "entity":
            assert f"{PREFIX}/{component}/{BASE}/{uid}/config" in configs
        assert REQUIRED[component] <= set(cfg)
        assert cfg["device"]["identifiers"] == ["flespi_5537057"]
        assert cfg["device"]["name"] == "SomeName"
        assert cfg["device"]["model"] == "flespi device type 1272"
        assert cfg["device"]["via_device"] == "flespi_bridge_flespi"
        assert cfg["origin"]["name"] == "flespi-bridge"
        assert "object_id" not in cfg  # ignored by Home Assistant since 2026.4
        if component == "device_automation":
            continue  # a trigger has no availability (Home Assistant drops what it is given)
        if uid.endswith("_connectivity"):
            assert cfg["availability"] == [{"topic": f"{BASE}/bridge/state"}]
        else:
            assert cfg["availability_mode"] == "all"
            assert cfg["availability"] == [{"topic": f"{BASE}/bridge/state"},
                                           {"topic": f"{BASE}/5537057/availability"}]
        device_class = cfg.get("device_class")
        units = UNITS.get(device_class)
        if units is not None:
            assert cfg.get("unit_of_measurement") in units, uid
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


def test_device_config_shares_device_origin_and_availability_once() -> None:
    dev = full_device(Store())
    (cfg,) = device_configs(Context(PREFIX, BASE), dev, ATTRS).values()
    assert set(cfg) == {"dev", "o", "availability", "availability_mode", "cmps"}
    assert set(cfg["o"]) == {"name", "sw", "url"}
    assert cfg["availability_mode"] == "all"
    battery = cfg["cmps"]["battery"]
    assert battery["p"] == "sensor"
    assert battery["unique_id"] == "flespi_5537057_battery"
    for comp in cfg["cmps"].values():
        assert not {"device", "dev", "origin", "o"} & set(comp)
    # only the connectivity entity overrides the shared availability
    assert [k for k, c in cfg["cmps"].items() if "availability" in c] == ["connectivity"]


def test_entity_names_follow_home_assistant_conventions() -> None:
    """Names never repeat the device's; classes, units and categories are valid ones."""
    dev = full_device(Store())
    sensor_classes = {"battery", "voltage", "speed", "distance", "timestamp", None}
    binary_classes = {"battery_charging", "lock", "moving", "connectivity", None}
    for uid, (component, cfg) in entities(device_configs(Context(PREFIX, BASE), dev,
                                                         ATTRS)).items():
        if component == "device_automation":
            assert cfg["subtype"] == "Ignition", uid
            assert cfg["type"] in ("on", "off"), uid
            continue
        assert cfg["name"], uid
        assert dev.name.lower() not in cfg["name"].lower(), uid
        assert cfg.get("entity_category") in (None, "diagnostic", "config"), uid
        if component == "sensor":
            assert cfg.get("device_class") in sensor_classes, uid
            assert cfg.get("state_class") in (None, "measurement"), uid
        if component == "binary_sensor":
            assert cfg.get("device_class") in binary_classes, uid
            assert "unit_of_measurement" not in cfg, uid


def test_attribute_output_uses_per_attribute_topics() -> None:
    dev = full_device(Store())
    configs = device_configs(Context(PREFIX, BASE, output="attribute", expire_after=600), dev,
                             ATTRS)
    by_uid = {u: c for u, (_, c) in entities(configs).items()}
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
    assert set(entities(device_configs(Context(PREFIX, BASE), store.devices[1], ATTRS))) == {
        "flespi_1_battery", "flespi_1_last_seen"}


def test_entity_layout_diff_republishes_changes_and_clears_leftovers() -> None:
    store = Store()
    dev = full_device(store)
    ctx = Context(PREFIX, BASE, mode="entity")
    disco = Discovery(ctx)
    owner = device_owner(dev.id)
    first = disco.update(owner, device_configs(ctx, dev, ATTRS))
    assert first
    assert all(p.payload for p in first)
    assert disco.update(owner, device_configs(ctx, dev, ATTRS)) == []  # nothing changed
    store.apply_name(dev.id, "Renamed")
    renamed = disco.update(owner, device_configs(ctx, dev, ATTRS))
    assert len(renamed) == len(first)
    assert {orjson.loads(p.payload)["unique_id"] for p in renamed} == {
        orjson.loads(p.payload)["unique_id"] for p in first}
    fewer = {t: c for t, c in device_configs(ctx, dev, ATTRS).items()
             if not c["unique_id"].endswith("_battery")}
    cleared = [p for p in disco.update(owner, fewer) if not p.payload]
    assert [p.topic for p in cleared] == [f"{PREFIX}/sensor/{BASE}/flespi_{dev.id}_battery/config"]
    assert {p.topic for p in disco.forget(owner)} == set(fewer)


def test_device_layout_removes_an_entity_inside_cmps_and_a_device_with_an_empty_config(
        ) -> None:
    store = Store()
    dev = full_device(store)
    ctx = Context(PREFIX, BASE)
    disco = Discovery(ctx)
    owner = device_owner(dev.id)
    topic = f"{PREFIX}/device/{BASE}/flespi_{dev.id}/config"
    (first,) = disco.update(owner, device_configs(ctx, dev, ATTRS))
    assert first.topic == topic
    assert disco.update(owner, device_configs(ctx, dev, ATTRS)) == []
    del dev.values["battery"]
    (fewer,) = disco.update(owner, device_configs(ctx, dev, ATTRS))
    cmps = orjson.loads(fewer.payload)["cmps"]
    assert cmps["battery"] == {"p": "sensor"}  # the removal of one entity
    assert cmps["voltage"]["unique_id"] == f"flespi_{dev.id}_voltage"
    dev.values["battery"] = 55
    (back,) = disco.update(owner, device_configs(ctx, dev, ATTRS))
    assert orjson.loads(back.payload)["cmps"]["battery"]["unique_id"] == f"flespi_{dev.id}_battery"
    assert [(p.topic, p.payload) for p in disco.forget(owner)] == [(topic, b"")]


def test_migration_sequence_in_both_directions() -> None:
    """migrate_discovery on the old topics, then the new config(s), then the old cleared;
    an old entity no longer generated is just cleared."""
    dev = full_device(Store())
    owner = device_owner(dev.id)
    old_entity = Context(PREFIX, BASE, mode="entity")
    entity_topics = sorted(device_configs(old_entity, dev, ATTRS))
    ghost = f"{PREFIX}/sensor/{BASE}/flespi_{dev.id}_odometer/config"
    ctx = Context(PREFIX, BASE)
    disco = Discovery(ctx)
    disco.hold()
    assert disco.update(owner, device_configs(ctx, dev, ATTRS)) == []  # held back
    disco.release({owner: [*entity_topics, ghost]})
    pubs = [(p.topic, p.payload) for p in disco.update(owner, device_configs(ctx, dev, ATTRS))]
    device_topic = f"{PREFIX}/device/{BASE}/flespi_{dev.id}/config"
    n = len(entity_topics)
    assert pubs[:n] == [(t, b'{"migrate_discovery":true}') for t in entity_topics]
    assert pubs[n][0] == device_topic
    assert orjson.loads(pubs[n][1])["cmps"]["battery"]["unique_id"] == f"flespi_{dev.id}_battery"
    assert sorted(pubs[n + 1:]) == sorted((t, b"") for t in [*entity_topics, ghost])
    # a second update has nothing left to migrate
    assert disco.update(owner, device_configs(ctx, dev, ATTRS)) == []
    # and back: a downgrade to per-entity configs
    back = Discovery(old_entity)
    back.release({owner: [device_topic]})
    pubs = [(p.topic, p.payload) for p in back.update(owner, device_configs(old_entity, dev,
                                                                               ATTRS))]
    assert pubs[0] == (device_topic, b'{"migrate_discovery":true}')
    assert sorted(t for t, _ in pubs[1:-1]) == entity_topics
    assert pubs[-1] == (device_topic, b"")


def test_owner_of_config_topics() -> None:
    ctx = Context(PREFIX, BASE)
    assert ctx.owner(f"{PREFIX}/device/{BASE}/flespi_12/config") == ("flespi_12", "device", None)
    assert ctx.owner(f"{PREFIX}/sensor/{BASE}/flespi_12_can_fuel/config") == (
        "flespi_12", "entity", "can_fuel")
    assert ctx.owner(f"{PREFIX}/binary_sensor/{BASE}/flespi_bridge_{BASE}_connection/config"
                     ) == (f"flespi_bridge_{BASE}", "entity", "connection")
    assert ctx.owner(f"{PREFIX}/sensor/other/flespi_12_battery/config") is None
    assert ctx.owner(f"{PREFIX}/device/{BASE}/something/config") is None


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
    return {u for u in entities(live_configs(rec)) if not u.startswith("flespi_bridge")}


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
    # exactly one config per device, each entity in exactly one of them
    assert sorted(configs) == sorted(
        [f"{PREFIX}/device/{BASE}/flespi_{d}/config" for d in sim.devices]
        + [f"{PREFIX}/device/{BASE}/flespi_bridge_{BASE}/config"])
    uids = [c["unique_id"] for cfg in configs.values() for c in cfg["cmps"].values()]
    assert len(uids) == len(set(uids))
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
            uids = set(entities({m.topic: m.json() for m in new
                                 if m.topic.endswith("/config")}))
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
    assert not any(f"_{gone}_" in u for u in entities(configs))
    assert f"{PREFIX}/device/{BASE}/flespi_{gone}/config" not in configs


async def test_removed_from_selection_and_ghosts_are_cleared_on_restart(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    ids = list(sim.devices)
    await sim.set_values(ids[0], {"custom.fuel.tank": 40.0})
    first = await bridge_factory(make_settings(
        upstream, local, flespi={"extra_parameters": ["custom.fuel.tank"]}))
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
            configs = {t: m.json() for t, m in rec.latest.items()
                       if t.endswith("/config") and m.payload}
            uids = list(entities(configs))
            return sorted(uids) == sorted(kept | {"flespi_bridge_flespi_connection",
                                                  "x_battery"})
        await rec.wait_for(settled, what="exactly one config per live entity")
        await rec.wait_for(lambda: f"{BASE}/{ids[0]}/state" not in rec.latest,
                           what="dropped device's state cleared")
    configs = await retained_configs(local)  # this bridge's node id only
    assert len(configs) == len(ids[1:]) + 1  # one per device, and the bridge's
    assert set(entities(configs)) == kept | {"flespi_bridge_flespi_connection"}


async def test_rename_keeps_unique_ids(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                       sim: Simulator, bridge_factory: BridgeFactory) -> None:
    device_id = list(sim.devices)[2]
    async with Recorder(local, [CFG]) as rec:
        await bridge_factory(make_settings(upstream, local))
        await rec.wait_for(lambda: device_uids(rec) == expected_uids(sim), what="configs")
        before = {u: p for u, (p, _) in entities(live_configs(rec)).items()}
        topics = set(live_configs(rec))
        await sim.rename(device_id, "Renamed / scooter #1")

        def renamed() -> bool:
            mine = [c for u, (_, c) in entities(live_configs(rec)).items()
                    if u.startswith(f"flespi_{device_id}_")]
            return bool(mine) and all(c["device"]["name"] == "Renamed / scooter #1"
                                      for c in mine)

        await rec.wait_for(renamed, what="device renamed in discovery")
        assert {u: p for u, (p, _) in entities(live_configs(rec)).items()} == before
        assert set(live_configs(rec)) == topics


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


def assert_migrated(messages: list[Any], old: set[str], new: set[str]) -> None:
    """Home Assistant's protocol, in order for each owner: migrate_discovery on every old
    topic whose entities live on, then the new config(s), then the old topics cleared."""
    ctx = Context(PREFIX, BASE)
    seen = [(m.topic, m.payload) for m in messages if m.topic in old | new]

    def owner(topic: str) -> str:
        parsed = ctx.owner(topic)
        assert parsed is not None, topic
        return parsed[0]

    for topic in old:
        marks = [i for i, (t, p) in enumerate(seen) if t == topic and p == MIGRATE]
        clears = [i for i, (t, p) in enumerate(seen) if t == topic and not p]
        firsts = [i for i, (t, p) in enumerate(seen)
                  if t in new and p and owner(t) == owner(topic)]
        assert marks, topic
        assert clears, topic
        assert firsts, topic
        assert marks[0] < firsts[0] < clears[-1], topic


async def run_until_announced(bridge_factory: BridgeFactory, settings: Any, sim: Simulator,
                              local: mosquitto.Broker) -> Any:
    async with Recorder(local, [CFG]) as rec:
        bridge = await bridge_factory(settings)
        await rec.wait_for(lambda: device_uids(rec) == expected_uids(sim), what="configs")
    return bridge


@pytest.mark.parametrize(("before", "after"), [("entity", "device"), ("device", "entity")])
async def test_switching_discovery_mode_migrates_every_entity(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, before: str, after: str) -> None:
    first = await run_until_announced(
        bridge_factory, make_settings(upstream, local, homeassistant={"discovery_mode": before}),
        sim, local)
    await first.stop()
    old = set(await retained_configs(local))
    want = expected_uids(sim) | {"flespi_bridge_flespi_connection"}
    async with Recorder(local, [CFG]) as rec:
        bridge = await bridge_factory(make_settings(
            upstream, local, homeassistant={"discovery_mode": after}))

        def migrated() -> bool:
            live = live_configs(rec)
            return set(entities(live)) == want and not old & set(live)

        await rec.wait_for(migrated, what="every entity in the new layout, none in the old")
        assert bridge.loaded.is_set()  # nothing was handed over before the fleet was known
        new = set(live_configs(rec))
        assert_migrated(rec.messages, old, new)
        marked = {m.topic for m in rec.messages if m.payload == MIGRATE}
        assert marked == old  # every old config was handed over, none just deleted
    configs = await retained_configs(local)
    assert set(configs) == new
    uids = list(entities(configs))
    assert len(uids) == len(set(uids))
    assert set(uids) == want
    assert all((t.split("/")[1] == "device") == (after == "device") for t in configs)


async def test_a_config_left_in_the_other_layout_by_a_gone_device_is_cleared(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    ghost = f"{PREFIX}/sensor/{BASE}/flespi_999999_battery/config"
    async with Recorder(local, [CFG]) as rec:
        await rec.publish(ghost, orjson.dumps({"unique_id": "flespi_999999_battery"}), qos=1,
                          retain=True)
        await rec.wait_for(lambda: ghost in rec.latest, what="ghost retained")
        await bridge_factory(make_settings(upstream, local))
        await rec.wait_for(lambda: device_uids(rec) == expected_uids(sim), what="configs")
        await rec.wait_for(lambda: any(m.topic == ghost and not m.payload
                                       for m in rec.messages), what="ghost cleared")
        assert not any(m.topic == ghost and m.payload == MIGRATE for m in rec.messages)
