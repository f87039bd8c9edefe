"""The bridge on the local brokers users run (issue 21): a stock Mosquitto (Home Assistant's
add-on keeps Mosquitto's defaults), one protecting itself with a packet size limit, and a
broker that is not Mosquitto (amqtt, MQTT 3.1.1 only). Each is started by the test on a
free loopback port and stopped by its PID. Start-up, cleanup, the migration between
discovery layouts, commands and an outage of the local broker, on each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from support.helpers import (
    BridgeFactory,
    Brokers,
    Recorder,
    expected_state,
    make_settings,
    names_looked_up,
    poll,
    retained,
)

from bridge.app.bridge import Bridge
from bridge.config.settings import Settings
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

BASE = "flespi"
PREFIX = "homeassistant"
PROFILES = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}
MIGRATE = b'{"migrate_discovery":true}'
GONE = [f"{BASE}/999/state", f"{BASE}/999/lock/state", f"{PREFIX}/device/{BASE}/flespi_999/config"]


@pytest.fixture(params=["stock", "limited", "amqtt"])
def user_broker(request: pytest.FixtureRequest, brokers: Brokers) -> mosquitto.Broker:
    """The local broker as users run it."""
    if request.param == "amqtt":
        return brokers(foreign=True)
    return brokers(extra_config=mosquitto.CONFIGURATIONS[request.param])


def settings(upstream: mosquitto.Broker, local: mosquitto.Broker) -> Settings:
    # as the docs advise for a broker without MQTT 5 (the fallback itself: test_local_link)
    protocol = "3.1.1" if isinstance(local, mosquitto.Amqtt) else "auto"
    return make_settings(upstream, local, commands=PROFILES, local={"protocol": protocol})


async def seed(rec: Recorder, topics: list[str], payload: bytes = b'{"old": 1}') -> None:
    for topic in topics:
        await rec.publish(topic, payload, qos=1, retain=True)


async def states_arrive(rec: Recorder, sim: Simulator) -> None:
    await rec.wait_for(lambda: all(rec.state(BASE, d) == expected_state(sim, d)
                                   for d in sim.devices), timeout=20, what="every state")


@pytest.fixture
async def started(upstream: mosquitto.Broker, user_broker: mosquitto.Broker, sim: Simulator,
                  responder: Responder, bridge_factory: BridgeFactory
                  ) -> AsyncIterator[tuple[Bridge, Recorder]]:
    """A bridge started on `user_broker` after an earlier run left a gone device's topics
    and a live device's config in the entity layout."""
    live = next(iter(sim.devices))
    async with Recorder(user_broker, [f"{BASE}/#", f"{PREFIX}/#"]) as rec:
        await seed(rec, GONE)
        await seed(rec, [f"{PREFIX}/sensor/{BASE}/flespi_{live}_battery/config"],
                   orjson.dumps({"unique_id": f"flespi_{live}_battery"}))
        bridge = await bridge_factory(settings(upstream, user_broker))
        await asyncio.wait_for(bridge.loaded.wait(), 20)
        await names_looked_up(responder.requests)
        yield bridge, rec


async def test_start_up_publishes_every_state(started: tuple[Bridge, Recorder],
                                              sim: Simulator) -> None:
    _, rec = started
    await states_arrive(rec, sim)
    assert rec.latest[f"{BASE}/bridge/state"].payload == b"online"


async def test_cleanup_clears_a_gone_devices_topics(started: tuple[Bridge, Recorder],
                                                    user_broker: mosquitto.Broker,
                                                    sim: Simulator) -> None:
    _, rec = started
    await states_arrive(rec, sim)
    await rec.wait_for(lambda: all(any(m.topic == t and not m.payload for m in rec.messages)
                                   for t in GONE), timeout=30, what="the gone topics cleared")
    left = await retained(user_broker, [f"{BASE}/+/+", f"{BASE}/+/+/+", f"{PREFIX}/#"])
    assert not set(GONE) & set(left)
    assert all(f"{BASE}/{d}/state" in left for d in sim.devices)


async def test_the_other_layouts_config_is_migrated(started: tuple[Bridge, Recorder],
                                                    sim: Simulator) -> None:
    _, rec = started
    old = f"{PREFIX}/sensor/{BASE}/flespi_{next(iter(sim.devices))}_battery/config"
    await rec.wait_for(lambda: [m.payload for m in rec.messages if m.topic == old][1:]
                       == [MIGRATE, b""], timeout=30,
                       what="the old config handed over, then cleared")


async def test_a_command_gets_its_result(started: tuple[Bridge, Recorder],
                                         sim: Simulator) -> None:
    _, rec = started
    device_id = next(iter(sim.devices))
    await rec.publish(f"{BASE}/{device_id}/set", b'{"lock": true, "transaction": "m"}', qos=1)
    result = await rec.wait_for(lambda: next((m.json() for m in rec.messages
                                              if m.topic == f"{BASE}/{device_id}/result"),
                                             None), timeout=20, what="the result")
    assert (result["transaction"], result["status"]) == ("m", "ok"), result


async def test_the_fleet_is_back_after_a_broker_outage(started: tuple[Bridge, Recorder],
                                                       user_broker: mosquitto.Broker,
                                                       sim: Simulator) -> None:
    """The broker restarts without its retained messages (no persistence): the bridge
    reconnects and publishes the fleet again, with the changes made meanwhile."""
    bridge, rec = started
    await states_arrive(rec, sim)
    user_broker.kill()
    await poll(lambda: asyncio.sleep(0, bridge.local.connected.is_set()), lambda up: not up,
               10, lambda _: "the bridge to see the outage")
    for dev in sim.devices.values():
        await sim.step(dev)
    await sim.flush()
    user_broker.start()
    async with Recorder(user_broker, [f"{BASE}/#"]) as after:
        await states_arrive(after, sim)
