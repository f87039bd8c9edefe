"""Device settings as state: a number of a command profile shows the device's current setting
(flespi's retained `settings/{name}`), a set is confirmed by the setting's change, and a
refused or failed set leaves the number at the device's value."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.helpers import BridgeFactory, Recorder, make_settings, metric, retained

from bridge.app.bridge import Bridge
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE, SETTINGS

BASE = "flespi"
PROFILES = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}
INITIAL = SETTINGS[DEVICE_TYPE_ID]["upload_interval"].initial


@pytest.fixture
async def bridged(upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
                  responder: Responder, bridge_factory: BridgeFactory
                  ) -> AsyncIterator[tuple[Bridge, Recorder]]:
    async with Recorder(local, [f"{BASE}/+/upload_interval/state", f"{BASE}/+/last_command",
                                "homeassistant/device/#"]) as rec:
        bridge = await bridge_factory(make_settings(
            upstream, local, commands={**PROFILES, "timeout": 1}))
        await asyncio.wait_for(bridge.loaded.wait(), 10)
        yield bridge, rec


def shown(rec: Recorder, device_id: int) -> list[bytes]:
    topic = f"{BASE}/{device_id}/upload_interval/state"
    return [m.payload for m in rec.messages if m.topic == topic]


async def last_command(rec: Recorder, device_id: int, count: int) -> dict[str, Any]:
    """The `count`-th result on the device's retained last_command."""
    topic = f"{BASE}/{device_id}/last_command"
    found = await rec.wait_for(
        lambda: [m for m in rec.messages if m.topic == topic][count - 1:count] or None,
        what=f"result {count}")
    result: dict[str, Any] = found[0].json()
    return result


async def test_number_shows_the_device_setting_and_follows_it(
        bridged: tuple[Bridge, Recorder], sim: Simulator, responder: Responder,
        local: mosquitto.Broker) -> None:
    _, rec = bridged
    device_id = next(iter(sim.devices))
    cfg_topic = f"homeassistant/device/flespi/flespi_{device_id}/config"
    cfg = (await rec.wait_for(lambda: rec.latest.get(cfg_topic), what="config")).json()
    number = cfg["cmps"]["upload_interval"]
    assert number["state_topic"] == f"{BASE}/{device_id}/upload_interval/state"
    assert number["optimistic"] is False
    assert "value_template" not in number
    # the setting flespi holds, before any command
    await rec.wait_for(lambda: shown(rec, device_id) == [str(INITIAL).encode()],
                       what="the initial setting")

    # a set is confirmed by the setting's change at flespi
    await rec.publish(f"{BASE}/{device_id}/upload_interval/set", "60", qos=1)
    assert (await last_command(rec, device_id, 1))["status"] == "ok"
    await rec.wait_for(lambda: shown(rec, device_id)[-1:] == [b"60"], what="the new setting")

    # flespi fails the next set: nothing changes, the number keeps the device's value
    responder.fail_next = (400, "device refused the setting")
    await rec.publish(f"{BASE}/{device_id}/upload_interval/set", "120", qos=1)
    result = await last_command(rec, device_id, 2)
    assert (result["status"], result["code"]) == ("error", "flespi_error")
    # the bridge refuses one (out of range): no request to flespi, nothing shown either
    await rec.publish(f"{BASE}/{device_id}/upload_interval/set", "99999", qos=1)
    assert (await last_command(rec, device_id, 3))["code"] == "invalid_value"
    found = await retained(local, [f"{BASE}/{device_id}/upload_interval/state"])
    assert found == {f"{BASE}/{device_id}/upload_interval/state": b"60"}
    assert shown(rec, device_id) == [str(INITIAL).encode(), b"60"]

    # changed elsewhere (the flespi panel): the number follows
    await sim.set_setting(device_id, "upload_interval", {"upload_interval": 15})
    await rec.wait_for(lambda: shown(rec, device_id)[-1:] == [b"15"], what="changed elsewhere")


async def test_bad_setting_values_are_counted_and_the_last_good_one_stays(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    device_id = next(iter(sim.devices))
    async with Recorder(local, [f"{BASE}/+/upload_interval/state"]) as rec:
        bridge = await bridge_factory(make_settings(
            upstream, local, commands=PROFILES, metrics={"port": 0}))
        await asyncio.wait_for(bridge.loaded.wait(), 10)
        await rec.wait_for(lambda: shown(rec, device_id) == [str(INITIAL).encode()],
                           what="the initial setting")
        port = bridge.health.port if bridge.health else 0
        before = await metric(port, "flespi_bridge_invalid_inputs_total", source="upstream",
                              reason="bad_value") or 0
        for bad in ({"other": 5}, "fast", True, {"upload_interval": "x"}):
            await sim.set_setting(device_id, "upload_interval", bad)
        await sim.set_setting(device_id, "upload_interval", 45)  # a bare number is fine too
        await rec.wait_for(lambda: shown(rec, device_id)[-1:] == [b"45"], what="45")
        assert shown(rec, device_id) == [str(INITIAL).encode(), b"45"]
        assert await metric(port, "flespi_bridge_invalid_inputs_total", source="upstream",
                            reason="bad_value") == before + 4
        # a setting flespi removes reads unknown (Home Assistant's payload_reset "None")
        await sim.set_setting(device_id, "upload_interval", b"")
        await rec.wait_for(lambda: shown(rec, device_id)[-1:] == [b"None"], what="None")
