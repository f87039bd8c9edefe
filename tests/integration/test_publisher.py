"""End to end on real brokers: simulator -> upstream Mosquitto -> bridge -> local Mosquitto."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from support.helpers import (
    TOKEN,
    BridgeFactory,
    BridgeProcess,
    Procs,
    Recorder,
    expected_state,
    make_settings,
    wait_until,
)

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

BASE = "flespi"


async def test_local_state_matches_simulator(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                             sim: Simulator, bridge_factory: BridgeFactory) -> None:
    async with Recorder(local, [f"{BASE}/#"]) as rec:
        await bridge_factory(make_settings(upstream, local))
        for device_id in sim.devices:
            def initial(d: int = device_id) -> bool:
                return rec.state(BASE, d) == expected_state(sim, d)
            await rec.wait_for(initial, what=f"initial state of {device_id}")
        # New messages move the state on, and every retained state follows.
        for dev in sim.devices.values():
            await sim.step(dev)
            await sim.step(dev)
        await sim.flush()
        for device_id in sim.devices:
            def updated(d: int = device_id) -> bool:
                return rec.state(BASE, d) == expected_state(sim, d)
            await rec.wait_for(updated, what=f"updated state of {device_id}")
        first = next(iter(sim.devices.values()))
        info = rec.latest[f"{BASE}/{first.id}/info"].json()
        assert info == {"id": first.id, "name": first.name, "ident": first.ident,
                        "device_type_id": 1272, "protocol_id": 200}
        assert rec.latest[f"{BASE}/bridge/state"].payload == b"online"


async def test_states_are_retained(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                   sim: Simulator, bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(make_settings(upstream, local))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    device_id = next(iter(sim.devices))
    async with Recorder(local, [f"{BASE}/{device_id}/state"]) as first:
        await first.wait_for(lambda: first.state(BASE, device_id), what="state")
    # A subscriber arriving later gets the retained state at once.
    async with Recorder(local, [f"{BASE}/{device_id}/state"]) as late:
        item = await late.wait_for(lambda: late.latest.get(f"{BASE}/{device_id}/state"))
        assert item.retain
        assert item.json() == expected_state(sim, device_id)


async def test_availability_follows_connected(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                              sim: Simulator,
                                              bridge_factory: BridgeFactory) -> None:
    device_id = list(sim.devices)[1]
    topic = f"{BASE}/{device_id}/availability"
    async with Recorder(local, [f"{BASE}/+/availability"]) as rec:
        await bridge_factory(make_settings(upstream, local))
        await rec.wait_for(lambda: rec.latest.get(topic), what="availability")
        assert rec.latest[topic].payload == b"online"
        await sim.set_connected(device_id, False)
        await rec.wait_for(lambda: rec.latest[topic].payload == b"offline", what="offline")
        await sim.set_connected(device_id, True)
        await rec.wait_for(lambda: rec.latest[topic].payload == b"online", what="online again")


async def test_coalescing_merges_a_burst(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                         sim: Simulator, bridge_factory: BridgeFactory) -> None:
    """A flespi message fans out into one publication per parameter; with a window, the
    local broker sees one state publish per message, not one per parameter."""
    bridge = await bridge_factory(make_settings(upstream, local, local={"coalesce_window": 0.3}))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    device_id = next(iter(sim.devices))
    topic = f"{BASE}/{device_id}/state"
    async with Recorder(local, [topic]) as rec:
        await rec.wait_for(lambda: rec.latest.get(topic), what="retained state")
        before = len(rec.messages)
        values = await sim.step(sim.devices[device_id])
        assert len(values) > 5  # the burst really is many publications
        await rec.wait_for(lambda: rec.state(BASE, device_id) == expected_state(sim, device_id),
                           what="the new state")
        assert len(rec.messages) - before == 1


async def test_unknown_parameters_ignored_unless_configured(upstream: mosquitto.Broker,
                                                            local: mosquitto.Broker, sim: Simulator,
                                                            bridge_factory: BridgeFactory) -> None:
    device_id = next(iter(sim.devices))
    await sim.set_values(device_id, {"custom.fuel.tank": 42.5, "custom.param.77": True})
    await sim.flush()
    async with Recorder(local, [f"{BASE}/+/state"]) as rec:
        await bridge_factory(make_settings(upstream, local,
                                           flespi={"extra_parameters": ["custom.fuel.tank"]}))
        state = await rec.wait_for(lambda: rec.state(BASE, device_id), what="state")
        assert state["custom_fuel_tank"] == 42.5
        assert "custom_param_77" not in state
        assert "custom.param.77" not in state


async def test_killed_bridge_leaves_offline_will(upstream: mosquitto.Broker,
                                                 local: mosquitto.Broker, sim: Simulator,
                                                 tmp_path: Path, procs: Procs) -> None:
    bridge = procs(BridgeProcess(tmp_path, upstream, local)).start()  # logging at DEBUG
    async with Recorder(local, [f"{BASE}/bridge/state", f"{BASE}/+/state"]) as rec:
        await rec.wait_for(
            lambda: all(rec.state(BASE, d) for d in sim.devices), timeout=20,
            what="states from the bridge process")
        assert rec.latest[f"{BASE}/bridge/state"].payload == b"online"
        bridge.kill()  # SIGKILL: no goodbye
        await rec.wait_for(
            lambda: rec.latest[f"{BASE}/bridge/state"].payload == b"offline",
            timeout=20, what="the will")
    async with Recorder(local, [f"{BASE}/bridge/state"]) as late:
        item = await late.wait_for(lambda: late.latest.get(f"{BASE}/bridge/state"))
        assert (item.payload, item.retain) == (b"offline", True)
    # Debug logging of the whole run, connect included, never shows the token.
    text = bridge.log()
    assert "connected to flespi" in text
    assert TOKEN not in text


async def test_sigterm_publishes_offline_and_exits_zero(upstream: mosquitto.Broker,
                                                        local: mosquitto.Broker, sim: Simulator,
                                                        tmp_path: Path, procs: Procs) -> None:
    bridge = procs(BridgeProcess(tmp_path, upstream, local, log={"level": "INFO"})).start()
    async with Recorder(local, [f"{BASE}/bridge/state"]) as rec:
        await rec.wait_for(lambda: rec.latest.get(f"{BASE}/bridge/state")
                           and rec.latest[f"{BASE}/bridge/state"].payload == b"online",
                           timeout=20, what="online")
        bridge.signal(signal.SIGTERM)
        await rec.wait_for(
            lambda: rec.latest[f"{BASE}/bridge/state"].payload == b"offline",
            what="offline on shutdown")
    proc = bridge.proc
    assert proc is not None
    await wait_until(lambda: proc.poll() is not None, timeout=15, what="exit")
    assert proc.returncode == 0
    assert TOKEN not in bridge.log()
