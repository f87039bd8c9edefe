"""A real Home Assistant (pinned: homeassistant_harness.HA_VERSION) in front of the bridge.

Mosquitto and the flespi simulator are started by the test, the bridge runs between them, and
everything is asserted through Home Assistant itself: its REST API (`/api/states`, services,
`/api/template` for live device registry look-ups) and its registries on disk
(`.storage/core.entity_registry`, `.storage/core.device_registry`).

The checks are helpers keyed by `unique_id` (which stays the same whatever the discovery
layout), so a device-based discovery run and a per-entity → device migration run can reuse
them: same entities, same entity ids, and no duplicate or orphan in the registries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.helpers import BridgeFactory, make_settings, retained, wait_until
from support.homeassistant_api import (
    Api,
    devices_by_identifier,
    mqtt_entities,
    mqtt_problems,
    simulated_scooters,
    start_homeassistant,
    wait_until_async,
)
from support.homeassistant_harness import HomeAssistant, wait_api

from bridge.app.bridge import Bridge
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, DEVICE_TYPES, PROTOCOLS, SCOOTER_PROFILE, SimDevice

pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(1800)]

BASE = "flespi"
BRIDGE_IDENTIFIER = f"flespi_bridge_{BASE}"
# flespi's names of the scooter's device type and protocol (the simulator's REST API)
MODEL = DEVICE_TYPES[DEVICE_TYPE_ID]["title"]
MANUFACTURER = PROTOCOLS[DEVICE_TYPES[DEVICE_TYPE_ID]["protocol_id"]]["title"]


# Home Assistant's warning when a device config is replaced by per-entity configs
ROLLBACK = "No device components to cleanup"


@dataclass(frozen=True)
class Expected:
    """One entity of the seed scooter as Home Assistant must show it."""

    domain: str
    device_class: str | None = None
    unit: str | None = None
    # the state Home Assistant must show, from the simulated device (None: not checked)
    state: Callable[[SimDevice], str | float | None] | None = None
    # where the device page shows it: main (None), Configuration, Diagnostic
    category: str | None = None
    icon: str | None = None  # the icon the bridge gives it (None: not checked)


def _num(param: str) -> Callable[[SimDevice], float]:
    return lambda dev: float(dev.value(param))


def _onoff(param: str) -> Callable[[SimDevice], str]:
    return lambda dev: "on" if dev.value(param) else "off"


# What the seed scooter reports (battery, charging, signal, lock, position) with the
# scooter's command profile: its entities, keyed by the suffix of `flespi_<id>_<key>`.
# (No ignition, movement, external voltage: the scooter does not report them. No "Locked"
# binary sensor: the lock entity shows that state.)
DIAG, CONFIG = "diagnostic", "config"
EXPECTED: dict[str, Expected] = {
    "battery": Expected("sensor", "battery", "%", _num("battery.level")),
    "voltage": Expected("sensor", "voltage", "V", _num("battery.voltage")),
    "signal": Expected("sensor", None, "%", _num("gsm.signal.level"), DIAG, "mdi:signal"),
    "altitude": Expected("sensor", "distance", "m", _num("position.altitude")),
    "satellites": Expected("sensor", None, None, _num("position.satellites"), DIAG),
    "hdop": Expected("sensor", None, None, _num("position.hdop"), DIAG),
    "speed": Expected("sensor", "speed", "km/h", _num("position.speed")),
    "direction": Expected("sensor", None, "°", _num("position.direction")),
    "last_seen": Expected("sensor", "timestamp", None, category=DIAG),
    "charging": Expected("binary_sensor", "battery_charging", None,
                         _onoff("battery.charging.status")),
    "position_valid": Expected("binary_sensor", None, None, _onoff("position.valid"), DIAG,
                               "mdi:map-marker-check"),
    "connectivity": Expected("binary_sensor", "connectivity", None, lambda dev: "on", DIAG),
    "position": Expected("device_tracker"),
    "lock": Expected("lock", None, None,
                     lambda dev: "locked" if dev.value("lock.status") else "unlocked"),
    # a restart is a setting-like action, not a main control beside the lock
    "restart": Expected("button", "restart", category=CONFIG),
    "upload_interval": Expected("number", "duration", "s", lambda dev: float(
        dev.settings["upload_interval"]["upload_interval"]), CONFIG),  # the device's setting
    "last_command": Expected("sensor", category=DIAG, icon="mdi:console-line"),
    "command_result": Expected("event", icon="mdi:console-line"),
}


async def wait_registries(ha: HomeAssistant, dev: SimDevice) -> dict[str, dict[str, Any]]:
    """Until the registries on disk hold the device and its expected entities (Home
    Assistant saves them a few seconds after a change)."""
    wanted = {f"flespi_{dev.id}_{key}" for key in EXPECTED}

    def saved() -> bool:
        device = devices_by_identifier(ha).get(f"flespi_{dev.id}")
        return wanted <= set(mqtt_entities(ha)) and device is not None \
            and device["model"] == MODEL  # flespi's names are looked up after the first config
    await wait_until(saved, timeout=60, what="the scooter in the registries on disk")
    return mqtt_entities(ha)


def check_no_orphans(ha: HomeAssistant, sim: Simulator) -> None:
    """Exactly the entities and devices of the fleet and the bridge, each once."""
    assert set(mqtt_entities(ha)) == {f"flespi_{i}_{key}" for i in sim.devices
                                      for key in EXPECTED} | {f"{BRIDGE_IDENTIFIER}_connection"}
    assert set(devices_by_identifier(ha)) == {f"flespi_{i}" for i in sim.devices} | {
        BRIDGE_IDENTIFIER}


def check_registries(ha: HomeAssistant, dev: SimDevice) -> dict[str, str]:
    """The scooter's device and entities in the registries on disk; returns key -> entity_id.
    Exactly the expected entities, each once, all on the scooter's device."""
    entities = mqtt_entities(ha)
    devices = devices_by_identifier(ha)
    device = devices[f"flespi_{dev.id}"]
    bridge = devices[BRIDGE_IDENTIFIER]
    assert device["name"] == dev.name
    assert (device["manufacturer"], device["model"]) == (MANUFACTURER, MODEL)
    assert device["serial_number"] == dev.ident
    assert device["configuration_url"] == f"https://flespi.io/#/panel/open/devices/{dev.id}"
    assert device["via_device_id"] == bridge["id"]
    mine = {uid: e for uid, e in entities.items() if uid.startswith(f"flespi_{dev.id}_")}
    assert set(mine) == {f"flespi_{dev.id}_{key}" for key in EXPECTED}, \
        f"entities of the scooter: {sorted(mine)}"
    ids: dict[str, str] = {}
    for key, want in EXPECTED.items():
        entry = mine[f"flespi_{dev.id}_{key}"]
        assert entry["device_id"] == device["id"], key
        assert entry["entity_id"].split(".")[0] == want.domain, (key, entry["entity_id"])
        assert entry["original_device_class"] == want.device_class, key
        assert entry["unit_of_measurement"] == want.unit, key
        assert entry["entity_category"] == want.category, key
        if want.icon is not None:
            assert entry["original_icon"] == want.icon, key
        ids[key] = entry["entity_id"]
    return ids


def _matches(key: str, want: Expected, dev: SimDevice, state: dict[str, Any] | None) -> bool:
    if state is None or state["state"] == "unavailable":
        return False
    if state["state"] == "unknown" and want.domain not in ("button", "event") \
            and key != "last_command":
        return False  # a button has no state until pressed, an event until one fires, Last
        # command none before the first command
    attrs = state["attributes"]
    if attrs.get("device_class") != want.device_class or \
            attrs.get("unit_of_measurement") != want.unit:
        return False
    if key == "last_seen":
        newest = max(ts for _, ts in dev.telemetry.values())
        shown = datetime.fromisoformat(state["state"])
        return abs(shown.timestamp() - newest) < 1.5
    if key == "position":  # gps_accuracy: Home Assistant's zones need it
        return bool(attrs.get("source_type") == "gps") \
            and attrs.get("gps_accuracy") == round(dev.value("position.hdop") * 5.0, 1) \
            and abs(attrs["latitude"] - dev.value("position.latitude")) < 1e-6 \
            and abs(attrs["longitude"] - dev.value("position.longitude")) < 1e-6
    if key == "upload_interval" and (attrs.get("min"), attrs.get("max")) != (
            SCOOTER_PROFILE[key]["min"], SCOOTER_PROFILE[key]["max"]):
        return False
    if want.state is None:
        return True
    expected = want.state(dev)
    if isinstance(expected, float):
        return abs(float(state["state"]) - expected) <= 1e-6 * max(1.0, abs(expected))
    return bool(state["state"] == expected)


async def check_states(api: Api, ids: dict[str, str], dev: SimDevice,
                       timeout: float = 60) -> None:
    """Every entity of the scooter shows its class, unit and the device's value."""
    for key, want in EXPECTED.items():
        def shows(state: dict[str, Any] | None, key: str = key, want: Expected = want) -> bool:
            return _matches(key, want, dev, state)
        await api.wait_state(ids[key], shows, timeout=timeout,
                             what=f"showing {key} of {dev.name}")


@pytest.fixture
async def fleet(upstream: mosquitto.Broker) -> AsyncIterator[tuple[Simulator, Responder]]:
    async with simulated_scooters(upstream, 2) as both:
        yield both


async def test_scooter_in_a_real_home_assistant(
        homeassistant: HomeAssistant, upstream: mosquitto.Broker, local: mosquitto.Broker,
        fleet: tuple[Simulator, Responder], bridge_factory: BridgeFactory) -> None:
    """One Home Assistant session: per-entity discovery first, the migration to device-based
    discovery, commands that work, fail and are refused, and a restart of Home Assistant."""
    ha = homeassistant
    sim, responder = fleet
    api = Api(ha)
    await start_homeassistant(ha, local)
    profiles = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}
    seed = next(iter(sim.devices.values()))

    # An installation from before device-based discovery: one config per entity.
    legacy = Bridge(make_settings(upstream, local, commands=profiles,
                                  homeassistant={"discovery_mode": "entity"}))
    await legacy.start()
    try:
        await asyncio.wait_for(legacy.loaded.wait(), 30)
        await wait_registries(ha, seed)
        ids = check_registries(ha, seed)
        await check_states(api, ids, seed)
    finally:
        await legacy.stop()

    # Upgraded to device-based discovery: the same entities, the same entity ids, no
    # duplicate, no orphan; the per-entity configs are gone from the broker.
    bridge = await bridge_factory(make_settings(upstream, local, commands=profiles))
    await asyncio.wait_for(bridge.loaded.wait(), 30)
    await wait_until_async(lambda: retained(local, ["homeassistant/+/flespi/+/config"]),
                           lambda found: set(found) == {
                               f"homeassistant/device/flespi/{owner}/config" for owner in
                               [BRIDGE_IDENTIFIER, *(f"flespi_{i}" for i in sim.devices)]},
                           what="one config per device, none per entity")
    await check_states(api, ids, seed)
    assert check_registries(ha, seed) == ids
    check_no_orphans(ha, sim)
    device_id = (await api.template(f"{{{{ device_id('{ids['battery']}') }}}}")).strip()
    assert await api.template(f"{{{{ device_attr('{device_id}', 'name') }}}}") == seed.name
    assert await api.template(f"{{{{ device_attr('{device_id}', 'model') }}}}") == MODEL

    # (each bridge looked flespi's names up once: the failure injected next hits a command)
    await wait_until(lambda: sum(r.uri.startswith("gw/channel-protocols/")
                                 for r in responder.requests) >= 4, what="the look-ups")

    # An unlock flespi fails: the lock stays where telemetry says, Last command says why.
    responder.fail_next = (400, "device refused the command")
    await api.call("lock", "unlock", entity_id=ids["lock"])
    await api.wait_state(ids["last_command"],
                         lambda s: s is not None and s["state"] == "error"
                         and s["attributes"].get("code") == "flespi_error"
                         and "device refused" in s["attributes"].get("error", ""),
                         what="Last command: the failure")
    await api.wait_state(ids["lock"], lambda s: s is not None and s["state"] == "locked",
                         what="still locked after the failure")

    # Unlock from Home Assistant: REST over MQTT to flespi; the state follows telemetry.
    before = len(responder.requests)
    await api.call("lock", "unlock", entity_id=ids["lock"])
    await wait_until(lambda: len(responder.requests) > before, what="the unlock at flespi")
    request = responder.requests[before]
    assert (request.method, request.uri) == ("post", f"gw/devices/{seed.id}/commands")
    assert request.body[0]["name"] == SCOOTER_PROFILE["lock"]["command"]
    assert request.body[0]["properties"]["lock"] == 0
    await api.wait_state(ids["lock"], lambda s: s is not None and s["state"] == "unlocked",
                         what="unlocked")
    # ... and its result is on the device's Last command sensor
    await api.wait_state(ids["last_command"],
                         lambda s: s is not None and s["state"] == "ok"
                         and s["attributes"].get("command") == "Lock"  # the label
                         and bool(s["attributes"].get("time")),
                         what="Last command: ok")
    # The device locks itself (no command): Home Assistant follows the telemetry.
    await sim.set_values(seed.id, {"lock.status": True})
    await api.wait_state(ids["lock"], lambda s: s is not None and s["state"] == "locked",
                         what="locked by telemetry")
    assert len(responder.requests) == before + 1

    # The report interval shows the device's setting: a refused set leaves it there, a
    # set flespi executes shows once the device's setting has changed.
    interval = float(seed.settings["upload_interval"]["upload_interval"])
    responder.fail_next = (400, "setting rejected")
    await api.call("number", "set_value", entity_id=ids["upload_interval"], value=120)
    await api.wait_state(ids["last_command"],
                         lambda s: s is not None and s["state"] == "error"
                         and s["attributes"].get("command") == "Report interval",
                         what="Last command: the refused set")
    await api.wait_state(ids["upload_interval"],
                         lambda s: shows_number(s, interval),
                         what="the device's setting, not the value sent")
    await api.call("number", "set_value", entity_id=ids["upload_interval"], value=60)
    await api.wait_state(ids["upload_interval"],
                         lambda s: shows_number(s, 60),
                         what="the new setting")
    assert seed.settings["upload_interval"] == {"upload_interval": 60}

    # A restart of Home Assistant: registries saved, entities and states back.
    ha.stop()
    assert check_registries(ha, seed) == ids
    check_no_orphans(ha, sim)
    ha.start()
    await wait_api(ha)
    await check_states(api, ids, seed)
    assert mqtt_problems(ha) == [], "MQTT warnings or errors in Home Assistant's log"

    # Back to per-entity discovery: the same entities and entity ids, no orphan. Home
    # Assistant logs its own rollback of each device config it unloads (documented in
    # docs/home-assistant.md): that line only, and only in this direction.
    await bridge.stop()
    back = await bridge_factory(make_settings(upstream, local, commands=profiles,
                                              homeassistant={"discovery_mode": "entity"}))
    await asyncio.wait_for(back.loaded.wait(), 30)
    await wait_until_async(lambda: retained(local, ["homeassistant/device/flespi/+/config"]),
                           lambda found: found == {}, what="no device config left")
    await check_states(api, ids, seed)
    ha.stop()
    assert check_registries(ha, seed) == ids
    check_no_orphans(ha, sim)
    assert mqtt_problems(ha, allowed=(ROLLBACK,)) == [], \
        "MQTT warnings or errors in Home Assistant's log"


# A deleted device's state topic is cleared (empty retained payload) while Home Assistant's
# entities still subscribe to it: their templates fail on the empty payload before the
# cleared discovery configs remove them. Known, in the bridge's cleanup (issue 12).


async def test_device_deleted_in_flespi_leaves_home_assistant(
        homeassistant: HomeAssistant, upstream: mosquitto.Broker, local: mosquitto.Broker,
        fleet: tuple[Simulator, Responder], bridge_factory: BridgeFactory) -> None:
    ha = homeassistant
    sim, _ = fleet
    api = Api(ha)
    await start_homeassistant(ha, local)
    bridge = await bridge_factory(make_settings(
        upstream, local, commands={"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}))
    await asyncio.wait_for(bridge.loaded.wait(), 30)
    seed, other = list(sim.devices.values())
    await wait_registries(ha, seed)
    ids = check_registries(ha, seed)
    await check_states(api, ids, seed)
    await wait_registries(ha, other)
    other_ids = check_registries(ha, other)
    other_device = (await api.template(f"{{{{ device_id('{other_ids['battery']}') }}}}")).strip()
    await sim.delete(other.id)
    for entity_id in other_ids.values():
        await api.wait_state(entity_id, lambda s: s is None, what="removed")
    await wait_until_async(lambda: api.template(
        f"{{{{ device_attr('{other_device}', 'name') }}}}"), lambda out: out == "None",
        what="the deleted device gone from the device registry")
    await check_states(api, ids, seed, timeout=5)  # the other scooter is untouched
    # its state topics are cleared too, while Home Assistant still runs: nothing of it may
    # reach an entity that is not yet gone (template errors in Home Assistant's log)
    await wait_until_async(lambda: retained(local, [f"flespi/{other.id}/+"]),
                           lambda found: found == {}, what="the deleted device's topics cleared")
    await asyncio.sleep(1)  # Home Assistant logs what the clear caused within this second

    ha.stop()
    assert not any(uid.startswith(f"flespi_{other.id}_") for uid in mqtt_entities(ha))
    assert f"flespi_{other.id}" not in devices_by_identifier(ha)
    assert check_registries(ha, seed) == ids
    assert mqtt_problems(ha) == [], "MQTT warnings or errors in Home Assistant's log"


def shows_number(state: dict[str, Any] | None, value: float) -> bool:
    try:
        return state is not None and float(state["state"]) == value
    except ValueError:  # unknown, unavailable
        return False


def test_mqtt_problem_check_catches_home_assistant_log_lines(tmp_path: Path) -> None:
    """The log check can fail: it reads Home Assistant's own line format."""
    ha = HomeAssistant(Path("python"), tmp_path)
    ha.log_path.write_text(
        "2025-04-20 10:00:00.123 WARNING (MainThread) "
        "[homeassistant.components.mqtt.discovery] bad config\n"
        "2025-04-20 10:00:00.124 INFO (MainThread) [homeassistant.components.mqtt] ok\n"
        "2025-04-20 10:00:00.125 ERROR (MainThread) [homeassistant.helpers.template] "
        "Template variable error: 'value_json' is undefined\n"
        "2025-04-20 10:00:00.126 ERROR (MainThread) [homeassistant.core] not ours\n")
    assert [line.split()[2] for line in mqtt_problems(ha)] == ["WARNING", "ERROR"]


def test_the_log_check_reads_what_was_logged_before_a_restart(tmp_path: Path) -> None:
    """Home Assistant renames its log at every start: a warning logged before a restart
    still fails the check."""
    ha = HomeAssistant(Path("python"), tmp_path)
    ha.log_path.write_text("2026-12-07 10:00:00.123+00:00 WARNING (MainThread) "
                           "[homeassistant.components.mqtt.discovery] before the restart\n")
    ha.runtime = type(ha.runtime)(ha.runtime.release, Path("/bin/true"))
    ha.start()  # `/bin/true` for Home Assistant: only the log's hand-over matters here
    assert ha.proc is not None
    ha.proc.wait()
    assert [line.split()[2] for line in mqtt_problems(ha)] == ["WARNING"]
