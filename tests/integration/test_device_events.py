"""Device events end to end on real brokers: a flespi parameter whose values are events
becomes an `event` entity with device triggers, and each report of an event value is one
message on `<base>/<id>/<attribute>/event`, never retained and never flespi's replay of an
old value."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import jinja2
import pytest
from support.helpers import BridgeFactory, Recorder, make_settings, retained

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

BASE = "flespi"


@pytest.fixture
async def sim(upstream: mosquitto.Broker) -> AsyncIterator[Simulator]:
    simulator = Simulator(upstream.host, upstream.port, devices=1, seed=7)
    await simulator.start()
    yield simulator
    await simulator.stop()


def events(rec: Recorder, topic: str) -> list[dict[str, object]]:
    return [m.json() for m in rec.messages if m.topic == topic]


async def test_each_reported_event_is_one_unretained_message(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    (dev,) = sim.devices.values()
    # pressed before the bridge starts: flespi's telemetry replays it, it is no news
    await sim.set_values(dev.id, {"panic.button.event": True})
    started = time.time()
    bridge = await bridge_factory(make_settings(upstream, local))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    topic = f"{BASE}/{dev.id}/panic_button/event"
    config = f"homeassistant/device/{BASE}/flespi_{dev.id}/config"
    async with Recorder(local, [f"{BASE}/+/+/event", config]) as rec:
        cfg = (await rec.wait_for(lambda: rec.latest.get(config), what="config")).json()
        event = cfg["cmps"]["panic_button"]
        assert (event["p"], event["state_topic"], event["event_types"],
                event["device_class"]) == ("event", topic, ["pressed"], "button")
        trigger = cfg["cmps"]["panic_button_pressed_trigger"]
        assert (trigger["p"], trigger["automation_type"], trigger["topic"], trigger["type"],
                trigger["subtype"], trigger["payload"]) == (
            "device_automation", "trigger", topic, "pressed", "Panic button", "pressed")
        await sim.set_values(dev.id, {"battery.level": 55})  # a message without the event
        await sim.set_values(dev.id, {"panic.button.event": False})  # released: no event
        await sim.set_values(dev.id, {"panic.button.event": True})
        await rec.wait_for(lambda: events(rec, topic) or None, what="the press")
        await sim.set_values(dev.id, {"panic.button.event": True})  # pressed again
        await rec.wait_for(lambda: len(events(rec, topic)) == 2 or None, what="the second")
        first, second = events(rec, topic)
        assert (first["event_type"], first["value"]) == ("pressed", True)
        assert str(first["time"]) >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))
        assert all(not m.retain for m in rec.messages if m.topic == topic)
        # what the device trigger compares with its payload
        assert jinja2.Template(trigger["value_template"]).render(value_json=second) == "pressed"
    assert await retained(local, [f"{BASE}/+/+/event"]) == {}
