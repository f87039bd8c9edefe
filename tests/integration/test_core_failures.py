"""The failures users met on real processes (issue 11), each reproduced and now held off:
retained commands running again, a future-stamped value freezing a device, a slow start-up
deleting live Home Assistant entities (the local broker away at start, or flespi silent),
and a dead task behind a green /healthz."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.helpers import (
    BridgeFactory,
    BridgeProcess,
    Brokers,
    Recorder,
    expected_state,
    make_settings,
    poll,
    retained,
    wait_metric,
    wait_until,
)

from bridge.app.bridge import Bridge
from bridge.app.cli import serve
from bridge.flespi.upstream import ConnectOptions, MessageHandler, Upstream
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

BASE = "flespi"
PROFILES = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}
COMMANDS = "flespi_bridge_commands_total"


def command_requests(responder: Responder, device_id: int) -> list[Any]:
    uri = f"gw/devices/{device_id}/commands"
    return [r for r in responder.requests if r.uri == uri]


async def test_a_retained_command_never_runs(tmp_path: Path, brokers: Brokers,
                                             upstream: mosquitto.Broker, sim: Simulator,
                                             procs: Callable[[BridgeProcess], BridgeProcess]
                                             ) -> None:
    """A retained unlock left on the broker is answered `retained` on every delivery — the
    first, after a local broker restart, after a bridge restart — and never reaches flespi."""
    responder = Responder(sim)
    await responder.attach()
    local = brokers(persistence=True)  # keeps the retained command across its restart
    device = next(iter(sim.devices))
    port = mosquitto.free_port()
    sections: dict[str, dict[str, Any]] = {
        "commands": PROFILES, "metrics": {"enabled": True, "port": port}}
    async with Recorder(local, []) as rec:
        await rec.publish(f"{BASE}/{device}/set", b'{"lock": false}', qos=1, retain=True)
    bridge = procs(BridgeProcess(tmp_path, upstream, local, **sections)).start()
    try:
        await wait_metric(port, COMMANDS, lambda n: n == 1, outcome="retained", timeout=20)
        local.stop()
        local.start()  # the broker replays the retained command to the bridge's new session
        await wait_metric(port, COMMANDS, lambda n: n == 2, outcome="retained", timeout=20)
        bridge.kill()
        bridge.start()
        await wait_metric(port, COMMANDS, lambda n: n == 1, outcome="retained", timeout=20)
        assert command_requests(responder, device) == []
        assert sim.devices[device].telemetry["lock.status"][0] is True
        # the same command sent live (not retained) runs: the path itself works
        async with Recorder(local, [f"{BASE}/{device}/result"]) as rec:
            await rec.publish(f"{BASE}/{device}/set", b'{"lock": false, "transaction": "x"}',
                              qos=1)
            result = (await rec.wait_for(lambda: rec.latest.get(f"{BASE}/{device}/result"),
                                         timeout=20, what="the live result")).json()
        assert result["status"] == "ok", result
        assert len(command_requests(responder, device)) == 1
        assert "mosquitto_pub -r -n" in bridge.log()
    finally:
        await responder.close()


async def test_a_retained_home_assistant_status_does_not_republish(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    """A retained `online` on homeassistant/status is replayed on every subscription: it must
    not add a second full republish to the one every connect does. A live one still does."""
    device = next(iter(sim.devices))
    config = f"homeassistant/device/flespi/flespi_{device}/config"

    def published() -> int:
        return sum(m.topic == config for m in rec.messages)

    async with Recorder(local, [config]) as rec:
        await rec.publish("homeassistant/status", b"online", qos=1, retain=True)
        bridge = await bridge_factory(make_settings(upstream, local,
                                                    homeassistant={"status_delay": 1.0}))
        await asyncio.wait_for(bridge.loaded.wait(), 10)
        await wait_until(lambda: published() and bridge.publisher.idle(), what="start-up")
        before = published()
        # a republish caused by the retained status would come 0.5-1 s after the connect;
        # no event marks its absence, so the test watches that window
        await asyncio.sleep(1.5)
        assert published() == before
        await rec.publish("homeassistant/status", b"online", qos=1)
        await rec.wait_for(lambda: published() == before + 1,
                           what="the republish after a live online")
        await asyncio.sleep(1.2)
        assert published() == before + 1
        assert bridge.ready()


async def test_a_value_stamped_ahead_does_not_freeze_the_device(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    """A device clock 4 minutes fast: its value counts as arriving now; the next one, stamped
    with the present time, wins; `last_seen` is never in the future."""
    device = next(iter(sim.devices))
    dev = sim.devices[device]
    async with Recorder(local, [f"{BASE}/+/state"]) as rec:
        await bridge_factory(make_settings(upstream, local))
        await sim.publish_values(dev, {"battery.level": 50}, time.time() + 240)
        await rec.wait_for(lambda: (rec.state(BASE, device) or {}).get("battery") == 50,
                           what="the fast-clock value")
        await sim.publish_values(dev, {"battery.level": 40}, time.time())
        state = await rec.wait_for(
            lambda: (s := rec.state(BASE, device)) and s.get("battery") == 40 and s,
            what="the value stamped now")
    seen = time.mktime(time.strptime(state["last_seen"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert seen <= time.time() + 1


async def test_a_slow_start_up_clears_nothing_live(
        tmp_path: Path, brokers: Brokers, upstream: mosquitto.Broker,
        procs: Callable[[BridgeProcess], BridgeProcess],
        bridge_factory: BridgeFactory) -> None:
    """The local broker is away at start and the replay stalls at the inflight window for
    longer than the old 60 s start-up timeout: once the broker is back, the leftovers of a
    device that is gone are cleared, and not one topic of the live devices is."""
    sim = Simulator(upstream.host, upstream.port, devices=8, seed=3)
    await sim.start()
    local = brokers(persistence=True)
    try:
        live = await _earlier_run(upstream, local, bridge_factory)
        local.stop()
        bridge = procs(BridgeProcess(tmp_path, upstream, local,
                                     flespi={"max_inflight": 10, "client_id": "slow-start"}))
        bridge.start()
        # the old bridge took the state as loaded after 60 s, with a few devices replayed
        await asyncio.sleep(65)
        local.start()
        left = await _wait_retained(local, FILTERS, lambda r: not GONE & set(r), timeout=60)
        assert live <= set(left), sorted(live - set(left))[:10]
        # nothing live was cleared even for a moment (Home Assistant deletes an entity on
        # the first empty config): the one cleanup cleared the gone device's two topics
        cleanups = re.findall(r"clearing (\d+) stale retained topics", bridge.log())
        assert cleanups == ["2"], cleanups
    finally:
        await sim.stop()


async def test_nothing_is_cleared_while_flespi_stalls_at_start(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    """flespi answers nothing at start (its broker frozen) while the local broker holds the
    topics of a live fleet and of a device that is gone: the bridge takes its inventory of
    retained topics at once, but clears nothing, not even for a moment, until the full
    upstream state has arrived; then only the gone device's topics."""
    sim = Simulator(upstream.host, upstream.port, devices=8, seed=4)
    await sim.start()
    try:
        live = await _earlier_run(upstream, local, bridge_factory)
        assert upstream.pid is not None
        async with Recorder(local, ["#"]) as rec:
            os.kill(upstream.pid, signal.SIGSTOP)  # flespi accepts the connection, says nothing
            try:
                second = await bridge_factory(make_settings(
                    upstream, local, flespi={"client_id": "stalled-start"}))
                # its inventory of retained topics is taken (the marker on the local broker)
                await rec.wait_for(lambda: any("/inventory-" in m.topic for m in rec.messages),
                                   timeout=20, what="the second run's inventory")
                assert not second.loaded.is_set()
            finally:
                os.kill(upstream.pid, signal.SIGCONT)
            await asyncio.wait_for(second.loaded.wait(), 60)
            await rec.wait_for(lambda: all(t not in rec.latest for t in GONE) and all(
                any(m.topic == t and not m.payload for m in rec.messages) for t in GONE),
                timeout=20, what="the gone device's topics cleared")
            cleared = {m.topic for m in rec.messages if not m.payload}
        assert not cleared & live, sorted(cleared & live)[:10]
        assert live <= set(await retained(local, FILTERS))
    finally:
        await sim.stop()


FILTERS = [f"{BASE}/+/+", "homeassistant/+/flespi/+/config"]
GONE = {f"{BASE}/999/state", "homeassistant/sensor/flespi/flespi_999_battery/config"}


async def _earlier_run(upstream: mosquitto.Broker, local: mosquitto.Broker,
                       bridge_factory: BridgeFactory) -> set[str]:
    """An earlier run leaves every live device's topics on `local`, and the `GONE` topics
    of a device no longer in flespi; returns the live ones."""
    first = await bridge_factory(make_settings(upstream, local,
                                               flespi={"client_id": "earlier-run"}))
    await asyncio.wait_for(first.loaded.wait(), 20)
    # discovery is held until the first run has taken its inventory of retained topics:
    # once every device's config is out, leftovers published now are not in it
    await _wait_retained(local, FILTERS, lambda r: sum(
        t.startswith("homeassistant/device/") for t in r) >= 8 + 1, timeout=20)
    async with Recorder(local, []) as rec:
        await rec.publish(f"{BASE}/999/state", b'{"battery": 1}', qos=1, retain=True)
        await rec.publish("homeassistant/sensor/flespi/flespi_999_battery/config",
                          b'{"name": "Battery"}', qos=1, retain=True)
    await first.stop()
    before = set(await retained(local, FILTERS))
    assert before >= GONE
    live = before - GONE
    assert len(live) >= 8 * 4  # state, availability, info and one config per device
    return live


async def _wait_retained(broker: mosquitto.Broker, filters: list[str],
                         predicate: Callable[[dict[str, bytes]], bool],
                         timeout: float) -> dict[str, bytes]:
    return await poll(lambda: retained(broker, filters), predicate, timeout,
                      lambda found: "the retained topics", interval=0.2)


class BrokenUpstream:
    """An upstream whose connect fails with an error nobody planned for (a bug)."""

    def __init__(self, options: ConnectOptions, on_message: MessageHandler) -> None:
        self.options = options

    connected = False
    session_present = False

    async def connect(self) -> None:
        raise RuntimeError("a bug in the upstream client")

    async def subscribe(self, filters: Sequence[str], *, resend_retained: bool = True) -> None:
        raise AssertionError("never reached")

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        raise AssertionError("never reached")

    def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        raise AssertionError("never reached")

    def ack(self, tokens: Any) -> None:
        pass

    async def wait_closed(self) -> None:
        await asyncio.Event().wait()

    async def disconnect(self) -> None:
        pass


def broken_factory(options: ConnectOptions, on_message: MessageHandler) -> Upstream:
    return BrokenUpstream(options, on_message)


async def test_a_dead_task_fails_healthz_and_the_process_exits_non_zero(
        upstream: mosquitto.Broker, local: mosquitto.Broker) -> None:
    """An essential task that ends (here the upstream loop, through a bug) is never hidden
    behind a green /healthz: health turns 503 and `run` exits 1 for a supervisor to see."""
    bridge = Bridge(make_settings(upstream, local), upstream_factory=broken_factory)
    await bridge.start()
    try:
        await asyncio.wait_for(bridge.failed.wait(), 10)
        assert bridge.health is not None
        async with httpx.AsyncClient() as http:
            health = await http.get(f"http://127.0.0.1:{bridge.health.port}/healthz")
        assert health.status_code == 503
        assert not bridge.ready()
    finally:
        await bridge.stop()
    again = Bridge(make_settings(upstream, local), upstream_factory=broken_factory)
    assert await asyncio.wait_for(serve(again, asyncio.Event()), 20) == 1


@pytest.mark.parametrize("first", ["upstream", "local"])
async def test_the_bridge_starts_before_either_broker(
        first: str, tmp_path: Path, brokers: Callable[..., Any],
        procs: Callable[[BridgeProcess], BridgeProcess]) -> None:
    """Started with both brokers away, then the brokers in either order: the fleet arrives
    and nothing is left waiting."""
    upstream = brokers(extra_config=mosquitto.FLESPI_LIKE)
    local = brokers()
    upstream.stop()
    local.stop()
    port = mosquitto.free_port()
    bridge = procs(BridgeProcess(tmp_path, upstream, local,
                                 metrics={"enabled": True, "port": port})).start()
    for broker in (upstream, local) if first == "upstream" else (local, upstream):
        await wait_metric(port, "flespi_bridge_connection_up", lambda v: v == 0,
                          side="upstream" if broker is upstream else "local")
        broker.start()
    sim = Simulator(upstream.host, upstream.port, devices=3, seed=5)
    await sim.start()
    try:
        async with Recorder(local, [f"{BASE}/+/state"]) as rec:
            await rec.wait_for(lambda: all(rec.state(BASE, d) == expected_state(sim, d)
                                           for d in sim.devices), timeout=30,
                               what="every device's state")
        await wait_metric(port, "flespi_bridge_queue_depth", lambda v: v == 0,
                          queue="upstream_acks")
        assert "Traceback" not in bridge.log()
    finally:
        await sim.stop()
