"""What the docs promise about options (docs/configuration.md, docs/home-assistant.md,
docs/commands.md), each shown on real brokers: `coalesce_window = 0`,
`homeassistant.include`, `homeassistant.discovery = false`, a custom `base_topic`,
`local.qos = 0`, refusing commands while shutting down, and the bounded result outbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from support.helpers import Recorder, make_settings, retained, wait_until

from bridge.app.bridge import Bridge
from bridge.config import settings as config
from bridge.core.outbox import Outbox
from bridge.core.transport import Publication
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

BridgeFactory = Callable[[config.Settings], Awaitable[Bridge]]
PROFILES = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}


async def arrival(rec: Recorder, topic: str, sim: Simulator, device: int, level: int) -> float:
    """Seconds from flespi publishing a battery level to the local state showing it."""
    start = time.monotonic()
    await sim.set_values(device, {"battery.level": level})
    await rec.wait_for(lambda: (m := rec.latest.get(topic)) and m.json()["battery"] == level,
                       what=f"battery {level}")
    return time.monotonic() - start


async def test_coalesce_window_zero_publishes_at_once(upstream: mosquitto.Broker,
                                                      local: mosquitto.Broker, sim: Simulator,
                                                      bridge_factory: BridgeFactory) -> None:
    """With a 2 s window an update waits 2 s; with 0 it goes out at once."""
    device = next(iter(sim.devices))
    topic = f"flespi/{device}/state"
    async with Recorder(local, [topic]) as rec:
        slow = await bridge_factory(make_settings(upstream, local,
                                                  local={"coalesce_window": 2.0}))
        await asyncio.wait_for(slow.loaded.wait(), 10)
        await rec.wait_for(lambda: rec.latest.get(topic), what="the first state")
        assert await arrival(rec, topic, sim, device, 11) >= 1.9
        await slow.stop()
        await bridge_factory(make_settings(upstream, local, local={"coalesce_window": 0}))
        assert await arrival(rec, topic, sim, device, 12) < 1.0


async def test_include_announces_only_the_listed_devices(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    first = next(iter(sim.devices))
    bridge = await bridge_factory(make_settings(upstream, local,
                                                homeassistant={"include": [first]}))
    async with Recorder(local, ["flespi/+/state"]) as rec:
        await rec.wait_for(lambda: all(rec.state("flespi", d) for d in sim.devices),
                           what="every device's state")
    configs = await retained(local, ["homeassistant/#"])
    devices = {t.split("/")[3].split("_")[1] for t in configs if "_bridge_" not in t}
    assert devices == {str(first)}
    assert bridge.ready()


async def test_discovery_off_publishes_no_config(upstream: mosquitto.Broker,
                                                 local: mosquitto.Broker, sim: Simulator,
                                                 bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(make_settings(upstream, local,
                                                homeassistant={"discovery": False}))
    async with Recorder(local, ["flespi/+/state"]) as rec:
        await rec.wait_for(lambda: all(rec.state("flespi", d) for d in sim.devices),
                           what="every device's state")
    # configs would go out in the same batches as the states, before them
    assert await retained(local, ["homeassistant/#"]) == {}
    assert bridge.ready()


async def test_a_custom_base_topic_carries_everything(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        responder: Responder, bridge_factory: BridgeFactory) -> None:
    base = "fleet/scooters"
    device = next(iter(sim.devices))
    await bridge_factory(make_settings(upstream, local, local={"base_topic": base},
                                       commands=PROFILES))
    async with Recorder(local, [f"{base}/#", "flespi/#"]) as rec:
        await rec.wait_for(lambda: rec.latest.get(f"{base}/{device}/state"), what="state")
        assert rec.latest[f"{base}/bridge/state"].payload == b"online"
        await rec.publish(f"{base}/{device}/set", b'{"command": "restart", "transaction": 1}',
                          qos=1)
        result = await rec.wait_for(lambda: rec.latest.get(f"{base}/{device}/result"),
                                    what="the result")
        assert result.json()["status"] == "ok"
        assert not [m for m in rec.messages if m.topic.startswith("flespi/")]
    configs = await retained(local, ["homeassistant/+/+/+/config"])
    cfg = orjson.loads(configs[f"homeassistant/device/fleet_scooters/flespi_{device}/config"])
    assert cfg["cmps"]["battery"]["state_topic"] == f"{base}/{device}/state"


async def test_qos_zero_publishes_at_qos_zero(upstream: mosquitto.Broker,
                                              local: mosquitto.Broker, sim: Simulator,
                                              bridge_factory: BridgeFactory) -> None:
    await bridge_factory(make_settings(upstream, local, local={"qos": 0}))
    async with Recorder(local, ["flespi/+/state"]) as rec:
        await rec.wait_for(lambda: all(rec.state("flespi", d) for d in sim.devices),
                           what="every device's state")
        device = next(iter(sim.devices))
        await sim.set_values(device, {"battery.level": 33})
        live = await rec.wait_for(
            lambda: [m for m in rec.messages if m.topic == f"flespi/{device}/state"
                     and not m.retain and m.json().get("battery") == 33],
            what="a live update")
    assert {m.qos for m in live} == {0}


async def test_commands_arriving_while_stopping_are_refused(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        responder: Responder, bridge_factory: BridgeFactory) -> None:
    """A stopping bridge finishes the command in flight and answers new ones
    `shutting_down` without sending them."""
    device = next(iter(sim.devices))
    bridge = await bridge_factory(make_settings(upstream, local, commands=PROFILES))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    responder.delay = 1.0
    topic = f"flespi/{device}/set"
    async with Recorder(local, [f"flespi/{device}/result"]) as rec:
        await rec.publish(topic, b'{"command": "restart", "transaction": "first"}', qos=1)
        await wait_until(lambda: any(r.uri.endswith("/commands") for r in responder.requests),
                         what="the first command at flespi (its answer takes 1 s)")
        stopping = asyncio.create_task(bridge.stop())
        await wait_until(lambda: bridge.commands.stopping, what="the bridge stopping")
        await rec.publish(topic, b'{"command": "restart", "transaction": "second"}', qos=1)
        await rec.wait_for(lambda: len(rec.messages) >= 2, what="both results")
        await stopping
    by_tx: dict[Any, Any] = {m.json()["transaction"]: m.json() for m in rec.messages}
    assert by_tx["first"]["status"] == "ok"
    assert by_tx["second"]["code"] == "shutting_down"
    assert len([r for r in responder.requests if r.uri.endswith("/commands")]) == 1


def test_the_result_outbox_is_bounded_and_counts_what_it_drops() -> None:
    """While the local broker is away, results wait, up to a bound: past it the oldest goes
    and the drop is counted; the rest keeps its order. Other work is never dropped."""
    woken: list[bool] = []
    dropped: list[str] = []
    outbox = Outbox(lambda: woken.append(True), dropped.append, max_results=3)
    outbox.add([Publication("flespi/1/message", b"{}", False)] * 5)
    for i in range(5):
        outbox.add_result(Publication(f"flespi/{i}/result", b"{}", False))
    assert dropped == ["outbox_full", "outbox_full"]
    work, results = outbox.take(100)
    assert len(work) == 5
    assert [p.topic for p in results] == [f"flespi/{i}/result" for i in (2, 3, 4)]
    assert woken
