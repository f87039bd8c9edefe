"""Fault injection on real processes: the bridge and the brokers are killed, restarted,
paused; nothing that flespi sent may be lost, and the bridge must keep working."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from pathlib import Path

import httpx
import pytest
from support.helpers import (
    BridgeFactory,
    BridgeProcess,
    Brokers,
    Procs,
    Recorder,
    commands_sent,
    expected_state,
    make_settings,
    retained,
    wait_until,
)

from bridge.core.backoff import STABLE_AFTER, Backoff
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

BASE = "flespi"


def sent_messages(sim: Simulator) -> set[tuple[int, float]]:
    """(device id, timestamp) of each device's newest message."""
    return {(d.id, d.telemetry["battery.level"][1]) for d in sim.devices.values()}


def received_messages(rec: Recorder) -> set[tuple[int, float]]:
    out = set()
    for m in rec.messages:
        if m.topic.endswith("/message"):
            body = m.json()
            out.add((body["device.id"], body["timestamp"]))
    return out


async def publish_while_away(sim: Simulator, rounds: int) -> set[tuple[int, float]]:
    sent: set[tuple[int, float]] = set()
    for _ in range(rounds):
        for dev in sim.devices.values():
            await sim.step(dev)
        sent |= sent_messages(sim)
    await sim.flush()
    return sent


async def test_nothing_is_lost_while_the_bridge_is_killed(upstream: mosquitto.Broker,
                                                          local: mosquitto.Broker, sim: Simulator,
                                                          tmp_path: Path, procs: Procs) -> None:
    bridge = procs(BridgeProcess(tmp_path, upstream, local, flespi={"messages": True}))
    bridge.start()
    async with Recorder(local, [f"{BASE}/+/message", f"{BASE}/+/state"]) as rec:
        await rec.wait_for(lambda: all(rec.state(BASE, d) == expected_state(sim, d)
                                       for d in sim.devices), timeout=30, what="first states")
        bridge.kill()  # SIGKILL: no goodbye, the session stays on the broker
        sent = await publish_while_away(sim, rounds=4)
        assert not sent & received_messages(rec)
        bridge.start()
        await rec.wait_for(lambda: sent <= received_messages(rec), timeout=30,
                           what="every message published while the bridge was down")
        await rec.wait_for(lambda: all(rec.state(BASE, d) == expected_state(sim, d)
                                       for d in sim.devices), what="final states")
    assert "session resumed" in bridge.log()


async def scrape(port: int) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text


def queue_depth(text: str, queue: str) -> float:
    match = re.search(rf'^flespi_bridge_queue_depth{{queue="{queue}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else -1.0


async def test_unpublished_updates_are_not_acknowledged(upstream: mosquitto.Broker,
                                                        local: mosquitto.Broker, sim: Simulator,
                                                        tmp_path: Path, procs: Procs) -> None:
    """The local broker dies, the bridge receives updates it cannot publish, then the bridge
    is killed too: flespi must still deliver those updates to the restarted bridge."""
    port = mosquitto.free_port()
    bridge = procs(BridgeProcess(tmp_path, upstream, local, flespi={"messages": True},
                                 metrics={"enabled": True, "port": port}))
    bridge.start()
    async with Recorder(local, [f"{BASE}/+/state"]) as rec:
        await rec.wait_for(lambda: all(rec.state(BASE, d) for d in sim.devices), timeout=30,
                           what="first states")
    local.kill()
    sent = await publish_while_away(sim, rounds=3)
    # the bridge holds them, unacknowledged, waiting for the local broker
    for _ in range(500):
        if queue_depth(await scrape(port), "upstream_acks") >= 3 * len(sim.devices):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the bridge never received the updates")
    bridge.kill()
    local.start()
    async with Recorder(local, [f"{BASE}/+/message", f"{BASE}/+/state"]) as rec:
        bridge.start()
        await rec.wait_for(lambda: sent <= received_messages(rec), timeout=30,
                           what="updates that were received but never published")
        await rec.wait_for(lambda: all(rec.state(BASE, d) == expected_state(sim, d)
                                       for d in sim.devices), what="final states")


async def test_local_broker_restart_without_persistence_republishes_everything(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(make_settings(upstream, local))
    topics = [f"{BASE}/#", "homeassistant/#"]
    configs = {f"homeassistant/device/{BASE}/flespi_{d}/config" for d in sim.devices}
    async with Recorder(local, [f"{BASE}/+/state", "homeassistant/device/#"]) as rec:
        await rec.wait_for(lambda: all(rec.state(BASE, d) for d in sim.devices)
                           and configs <= set(rec.latest), what="states and discovery")
    before = set(await retained(local, topics))
    assert configs <= before
    assert len(before) >= 4 * len(sim.devices)  # state, availability, info, config
    local.kill()
    await wait_until(lambda: not bridge.stats.up["local"], what="local down")
    assert not bridge.ready()
    local.start()  # empty: no retained message survived
    async with Recorder(local, topics) as rec:
        await rec.wait_for(lambda: {t for t, m in rec.latest.items() if m.payload} >= before,
                           timeout=20, what="every retained topic republished")
        assert rec.latest[f"{BASE}/bridge/state"].payload == b"online"
        for device_id in sim.devices:
            assert rec.state(BASE, device_id) == expected_state(sim, device_id)
    await wait_until(bridge.ready, what="ready again")
    assert bridge.stats.reconnects["local"] == 1


async def test_upstream_restart_resumes_the_session(brokers: Brokers, local: mosquitto.Broker,
                                                    bridge_factory: BridgeFactory,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    upstream = brokers(extra_config=mosquitto.FLESPI_LIKE, persistence=True)
    sim = Simulator(upstream.host, upstream.port, devices=2, seed=3)
    await sim.start()
    caplog.set_level(logging.INFO, logger="bridge")
    try:
        bridge = await bridge_factory(make_settings(upstream, local,
                                                    reconnect={"min_delay": 0.1,
                                                               "max_delay": 0.4}))
        await asyncio.wait_for(bridge.loaded.wait(), 10)
        upstream.stop()  # a graceful restart: the broker saves its sessions
        await wait_until(lambda: not bridge.stats.up["upstream"], what="upstream down")
        assert not bridge.ready()
        delays = await _reconnect_delays(caplog, count=3)
        assert all(0.1 <= d <= 0.4 for d in delays), delays
        upstream.start()
        await wait_until(bridge.ready, timeout=20, what="ready again")
        assert bridge.session.upstream is not None
        assert bridge.session.upstream.session_present  # resumed, not recreated
        assert bridge.stats.reconnects["upstream"] == 1
        async with Recorder(local, [f"{BASE}/+/state"]) as rec:
            for dev in sim.devices.values():
                await sim.step(dev)
            await sim.flush()
            await rec.wait_for(lambda: all(rec.state(BASE, d) == expected_state(sim, d)
                                           for d in sim.devices), what="states after restart")
    finally:
        await sim.stop()


async def _reconnect_delays(caplog: pytest.LogCaptureFixture, count: int) -> list[float]:
    pattern = re.compile(r"reconnecting to flespi in ([\d.]+)s")

    def delays() -> list[float]:
        return [float(m.group(1)) for r in caplog.records
                if (m := pattern.search(r.getMessage()))]

    await wait_until(lambda: len(delays()) >= count, timeout=10, what="reconnect attempts")
    return delays()


def test_backoff_grows_with_jitter_and_stays_bounded() -> None:
    import random

    now = [0.0]
    backoff = Backoff(0.5, 8.0, random.Random(1), clock=lambda: now[0])
    delays = [backoff.next() for _ in range(40)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[:2]) <= 1.0  # starts small
    assert max(delays[10:]) > 4.0  # grows to the cap
    assert len({round(d, 3) for d in delays}) > 30  # jittered, not a fixed schedule
    backoff.reset()
    now[0] += STABLE_AFTER  # connected, and it lasted
    assert backoff.next() == 0.5  # after a success the next outage starts small again


async def test_slow_local_broker_backpressure_and_coalescing(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    """A stalled local broker: the bridge holds its flespi acknowledgements back (the
    receive maximum stops flespi), merges each device's updates, drops nothing, and catches
    up with the latest state. (Mosquitto overshoots the receive maximum once acks flow; the
    bridge's memory is then bounded by the upstream guard, see test_upstream_unit.)"""
    bridge = await bridge_factory(make_settings(upstream, local, flespi={"max_inflight": 40}))
    device_id = next(iter(sim.devices))
    async with Recorder(local, [f"{BASE}/{device_id}/state"]) as rec:
        await rec.wait_for(lambda: rec.state(BASE, device_id), what="state")
        before = len(rec.messages)
        assert local.pid is not None
        os.kill(local.pid, signal.SIGSTOP)  # the broker stops reading
        try:
            steps = 0
            for _ in range(200):  # 200 messages, 3200 publications
                await sim.step(sim.devices[device_id])
                steps += 1
                await asyncio.sleep(0)
            await wait_until(lambda: bridge.ledger.pending >= 40, what="the inflight window full")
            assert bridge.session.connected  # the flespi side is not disturbed
            assert len(bridge.store.devices) == len(sim.devices)
        finally:
            os.kill(local.pid, signal.SIGCONT)
        await sim.flush()
        await rec.wait_for(lambda: rec.state(BASE, device_id) == expected_state(sim, device_id),
                           timeout=20, what="the latest state after the stall")
        published = len(rec.messages) - before
        assert published < steps  # coalesced: fewer publishes than updates
    assert bridge.stats.dropped["outbox_full"] == 0


async def test_sigterm_finishes_in_flight_commands(upstream: mosquitto.Broker,
                                                   local: mosquitto.Broker, sim: Simulator,
                                                   tmp_path: Path, procs: Procs) -> None:
    responder = Responder(sim)
    await responder.attach()
    responder.delay = 1.0  # flespi takes a second to answer
    bridge = procs(BridgeProcess(
        tmp_path, upstream, local,
        commands={"timeout": 5},
        shutdown={"grace": 8},
    ))
    # the command profile is a nested table: append it to the generated file
    profile = "\n".join(
        [f"[commands.profiles.{DEVICE_TYPE_ID}.restart]", 'component = "button"',
         f'command = "{SCOOTER_PROFILE["restart"]["command"]}"',
         "properties = { event_code = 2 }", ""])
    bridge.config.write_text(bridge.config.read_text() + "\n" + profile)
    bridge.start()
    device_id = next(iter(sim.devices))
    try:
        async with Recorder(local, [f"{BASE}/+/result", f"{BASE}/bridge/state",
                                    f"{BASE}/+/state"]) as rec:
            await rec.wait_for(lambda: all(rec.state(BASE, d) for d in sim.devices),
                               timeout=30, what="bridge up")
            await rec.publish(f"{BASE}/{device_id}/set",
                              b'{"command": "restart", "transaction": "last"}', qos=1)
            await wait_until(lambda: commands_sent(responder.requests),
                             what="the request reached flespi")
            bridge.signal(signal.SIGTERM)
            result = await rec.wait_for(
                lambda: rec.latest.get(f"{BASE}/{device_id}/result"), what="result")
            assert result.json()["status"] == "ok"
            assert result.json()["transaction"] == "last"
            await rec.wait_for(lambda: rec.latest[f"{BASE}/bridge/state"].payload == b"offline",
                               what="offline")
            order = [m.topic for m in rec.messages if m.topic.endswith(("result", "bridge/state"))]
            assert order.index(f"{BASE}/{device_id}/result") < len(order) - 1
        proc = bridge.proc
        assert proc is not None
        await wait_until(lambda: proc.poll() is not None, timeout=15, what="exit")
        assert proc.returncode == 0
    finally:
        await responder.close()
