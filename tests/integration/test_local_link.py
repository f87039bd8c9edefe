"""The local link on brokers with limits (issue 21): a value too large for the broker is
dropped, counted and logged, and holds up nothing else; two bridges sharing a client id do
not fight; a broker without MQTT 5 is spoken to in MQTT 3.1.1. Real brokers, a real
simulator, real bridges."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from support.helpers import (
    BridgeFactory,
    BridgeProcess,
    Brokers,
    Procs,
    Recorder,
    expected_state,
    make_settings,
    wait_until,
)

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

BASE = "flespi"
VIN = "V" * 100_000  # a 100 KB catalogue string (flespi takes payloads up to 256 KB)


async def test_a_state_too_large_for_the_broker_is_dropped_and_holds_up_nothing(
        brokers: Brokers, upstream: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Failure 1 of issue 21, with no string limit: the broker (`max_packet_size 65536`)
    dropped the connection on the oversized state, the bridge requeued it and reconnected
    ~4 times a second, and nothing behind it ever arrived."""
    local = brokers(extra_config=("max_packet_size 65536",))
    big, other = list(sim.devices)[:2]
    async with Recorder(local, [f"{BASE}/+/state"]) as rec:
        bridge = await bridge_factory(make_settings(upstream, local,
                                                    local={"max_string_length": 0}))
        await rec.wait_for(lambda: all(rec.state(BASE, d) for d in (big, other)),
                           what="initial states")
        before = rec.seen_state(BASE, big)
        await sim.set_values(big, {"vehicle.vin": VIN})
        await sim.flush()
        await sim.step(sim.devices[other])  # another device's update, after it
        await rec.wait_for(lambda: rec.state(BASE, other) == expected_state(sim, other),
                           what="the other device's later update")
        await wait_until(lambda: bridge.stats.dropped["too_large"] >= 1, what="the drop")
        await wait_until(lambda: bridge.ledger.pending == 0,
                         what="every flespi message acknowledged, the oversized one too")
        assert bridge.local.connects == 1  # never lost the connection
        assert rec.seen_state(BASE, big) == before  # the broker kept the last state it took
        await sim.set_values(big, {"vehicle.vin": VIN + "2"})  # still too large: dropped
        await sim.flush()
        await wait_until(lambda: bridge.stats.dropped["too_large"] >= 2, what="second drop")
    refusals = [r for r in caplog.records if "refused the publication" in r.getMessage()]
    assert len(refusals) == 1  # logged once per topic
    assert f"{BASE}/{big}/state" in refusals[0].getMessage()
    assert "65536" in refusals[0].getMessage()


async def test_a_string_over_the_limit_is_left_out_and_the_rest_of_the_state_arrives(
        brokers: Brokers, upstream: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    """`message_size_limit`: over MQTT 3.1.1 Mosquitto would acknowledge the oversized
    state and drop it unseen. The string limit (default 4096 bytes) keeps the state under
    it: the device's other values still arrive."""
    local = brokers(extra_config=("message_size_limit 65536",))
    device = next(iter(sim.devices))
    async with Recorder(local, [f"{BASE}/{device}/state", f"{BASE}/{device}/vin"]) as rec:
        bridge = await bridge_factory(make_settings(upstream, local,
                                                    local={"output": "both"}))
        await rec.wait_for(lambda: rec.state(BASE, device), what="initial state")
        await sim.set_values(device, {"vehicle.vin": "WVWZZZ1JZXW000001"})
        await rec.wait_for(lambda: (rec.state(BASE, device) or {}).get("vin")
                           == "WVWZZZ1JZXW000001", what="a VIN of normal length")
        for _ in range(2):
            await sim.set_values(device, {"vehicle.vin": VIN})
            await sim.step(sim.devices[device])
            await rec.wait_for(lambda: rec.state(BASE, device) == expected_state(sim, device),
                               what="the state, without the VIN")
        assert rec.latest[f"{BASE}/{device}/vin"].payload == b"WVWZZZ1JZXW000001"
        assert bridge.stats.dropped["too_long"] >= 2
        assert bridge.stats.dropped["too_large"] == 0
        assert bridge.local.connects == 1
    too_long = [r for r in caplog.records if "local.max_string_length" in r.getMessage()]
    assert len(too_long) == 1  # once per device and attribute
    assert f"device {device}: vin is 100000 bytes long" in too_long[0].getMessage()


async def test_two_bridges_with_one_client_id_do_not_fight(
        brokers: Brokers, upstream: mosquitto.Broker, local: mosquitto.Broker,
        sim: Simulator, tmp_path: Path, procs: Procs) -> None:
    """Each bridge's connect closes the other's connection (Debian's Mosquitto 2.0.11 says
    no reason). With the backoff reset on every CONNECT they took the session from each
    other several times a second, each time republishing the fleet."""
    sections: dict[str, dict[str, Any]] = {"reconnect": {"min_delay": 0.5, "max_delay": 30},
                                           "log": {"level": "INFO"}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = procs(BridgeProcess(tmp_path / "a", upstream, local, **sections))
    second = procs(BridgeProcess(tmp_path / "b", upstream, local,
                                 flespi={"client_id": "second-bridge"}, **sections))
    async with Recorder(local, [f"{BASE}/+/state"]) as rec:
        first.start()
        await rec.wait_for(lambda: all(rec.state(BASE, d) for d in sim.devices), timeout=30,
                           what="states from the first bridge")
        second.start()
        await wait_until(lambda: "after connecting" in first.log() + second.log(),
                         timeout=30, what="a bridge saying its connection was taken")
        await asyncio.sleep(10)  # a fight would be ~40 connects in this time
    connects = [p.log().count("connected to local broker") for p in (first, second)]
    assert sum(connects) <= 10, connects
    said = first.log() + second.log()
    assert "another client connected with client id 'flespi-bridge'" in said


async def test_a_broker_without_mqtt5_is_spoken_to_in_mqtt_311(
        upstream: mosquitto.Broker, sim: Simulator, bridge_factory: BridgeFactory,
        brokers: Brokers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "bridge.publish.local_broker")
    local = brokers(foreign=True)  # amqtt: MQTT 3.1.1 only
    device = next(iter(sim.devices))
    async with Recorder(local, [f"{BASE}/{device}/state"]) as rec:
        bridge = await bridge_factory(make_settings(upstream, local))
        await rec.wait_for(lambda: rec.state(BASE, device) == expected_state(sim, device),
                           timeout=30, what="the state, over MQTT 3.1.1")
        assert bridge.local.protocol == 4
        assert bridge.local.connects == 1
    said = [r.getMessage() for r in caplog.records if "MQTT 3.1.1" in r.getMessage()]
    assert len(said) == 1, said
    assert "connected with MQTT 3.1.1" in said[0]


@pytest.mark.parametrize("pinned", ["3.1.1", "5"])
async def test_local_protocol_pins_the_mqtt_version(
        pinned: str, upstream: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, brokers: Brokers,
        caplog: pytest.LogCaptureFixture) -> None:
    """`local.protocol = "3.1.1"` connects to a broker without MQTT 5 at once (no 10 s try
    of MQTT 5 first); `"5"` never falls back: an error, and no connection."""
    caplog.set_level(logging.WARNING, "bridge.publish.local_broker")
    local = brokers(foreign=True)  # amqtt: MQTT 3.1.1 only
    loop = asyncio.get_running_loop()
    began = loop.time()
    bridge = await bridge_factory(make_settings(upstream, local, local={"protocol": pinned}))
    if pinned == "3.1.1":
        await asyncio.wait_for(bridge.local.connected.wait(), 5)  # well under the 10 s try
        assert loop.time() - began < 5
        assert bridge.local.protocol == 4
        assert not [r for r in caplog.records if "MQTT 5" in r.getMessage()]
    else:
        await wait_until(lambda: any('local.protocol is "5"' in r.getMessage()
                                     for r in caplog.records), timeout=30,
                         what="the refusal of MQTT 5 logged")
        assert not bridge.local.connected.is_set()
        assert bridge.local.protocol == 5
