"""Start-up: while flespi replays the fleet, a device is announced to Home Assistant with
its sensors, never first without them; a device without telemetry once the replay is
complete."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
from support.helpers import TOKEN, BridgeFactory, Brokers, Recorder, make_settings, wait_until

from bridge.sim import brokers as mosquitto

PREFIX = "flespi/state/gw/devices"
DEVICES = list(range(7_100_001, 7_100_041))
SILENT = 7_100_099  # object and `connected`, never any telemetry
SENSORS = {"battery", "position"}


def config_topic(device_id: int) -> str:
    return f"homeassistant/device/flespi/flespi_{device_id}/config"


async def preload(upstream: mosquitto.Broker) -> None:
    """Retained upstream state, in the order flespi (and Mosquitto) replay it to a new
    subscriber: every device's object and `connected` first, then all the telemetry."""
    async with Recorder(upstream, []) as flespi:
        for device_id in [*DEVICES, SILENT]:
            obj = {"id": device_id, "name": f"scooter {device_id}", "device_type_id": 1272,
                   "configuration": {"ident": f"ident-{device_id}"}}
            await flespi.publish(f"{PREFIX}/{device_id}", orjson.dumps(obj), qos=1,
                                 retain=True)
            await flespi.publish(f"{PREFIX}/{device_id}/connected", b"true", qos=1,
                                 retain=True)
        for device_id in DEVICES:
            for param, value in (("battery.level", device_id % 100),
                                 ("position", {"latitude": -17.7, "longitude": -63.2})):
                await flespi.publish(f"{PREFIX}/{device_id}/telemetry/{param}",
                                     orjson.dumps(value), qos=1, retain=True)


def components(rec: Recorder, device_id: int) -> list[set[str]]:
    """The components of every config announced for the device, in order."""
    out = []
    for m in rec.messages:
        if m.topic == config_topic(device_id) and m.payload:
            cmps = m.json()["cmps"]
            assert isinstance(cmps, dict)
            out.append(set(cmps))
    return out


async def settle(rec: Recorder, bridge_idle: object) -> None:
    """Everything the bridge published has reached `rec` (a marker sent after it has)."""
    assert callable(bridge_idle)
    await wait_until(bridge_idle, what="the bridge's publications acknowledged")
    marker = f"homeassistant/test-marker-{os.urandom(4).hex()}"
    await rec.publish(marker, b"1", qos=1)
    await rec.wait_for(lambda: any(m.topic == marker for m in rec.messages), what="marker")


async def test_a_replayed_fleet_is_announced_with_its_sensors(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    await preload(upstream)
    async with Recorder(local, ["homeassistant/#"]) as rec:
        bridge = await bridge_factory(make_settings(upstream, local))
        await rec.wait_for(lambda: all(components(rec, d) for d in [*DEVICES, SILENT]),
                           timeout=20, what="every device announced")
        await asyncio.wait_for(bridge.loaded.wait(), 20)
        await settle(rec, bridge.publisher.idle)
    for device_id in DEVICES:
        announced = components(rec, device_id)
        assert all(SENSORS & cmps for cmps in announced), announced  # never without them
        assert SENSORS | {"connectivity"} <= announced[-1]
    assert ["connectivity" in cmps for cmps in components(rec, SILENT)] == [True]


async def test_until_the_replay_is_complete_a_device_without_telemetry_waits(
        tmp_path: Path, brokers: Brokers, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    """The start-up marker cannot come back here (the token may not publish to its reply
    topics), so the bridge never knows the replay is complete: the devices with telemetry
    are announced with it, the one without waits."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite #\nuser {TOKEN}\ntopic read #\n")
    upstream = brokers(extra_config=(*mosquitto.FLESPI_LIKE, f"acl_file {acl}"))
    await preload(upstream)
    async with Recorder(local, ["homeassistant/#", "flespi/+/state"]) as rec:
        bridge = await bridge_factory(make_settings(upstream, local))

        def replayed() -> bool:
            return all((rec.state("flespi", d) or {}).get("battery") == d % 100
                       and components(rec, d) for d in DEVICES)

        await rec.wait_for(replayed, timeout=20, what="the replay published")
        await settle(rec, bridge.publisher.idle)
        assert not bridge.loaded.is_set()
    for device_id in DEVICES:
        announced = components(rec, device_id)
        assert announced, device_id
        assert all(SENSORS & cmps for cmps in announced), announced
    assert components(rec, SILENT) == []
