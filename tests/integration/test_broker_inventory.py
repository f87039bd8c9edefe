"""The start-up inventory of retained topics on the broker users run (issue 21): a stock
Mosquitto (Home Assistant's add-on keeps its defaults) hands a QoS 1 subscriber at most
1,020 messages of a replay; the inventory still sees every topic of every layout, and an
inventory that fails is retried, never skipped."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from support.helpers import (
    BridgeFactory,
    Brokers,
    Recorder,
    make_settings,
    poll,
    retained,
    wait_until,
)

from bridge.mqtt.client import MqttClient
from bridge.mqtt.flight import Pub
from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

BASE = "flespi"
PREFIX = "homeassistant"
PAGES = [f"{BASE}/+/+", f"{BASE}/+/+/+", f"{PREFIX}/+/{BASE}/+/config"]
PROFILES = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}
MIGRATE = b'{"migrate_discovery":true}'


def device_topics(device_id: int) -> list[str]:
    """What a run of the bridge leaves retained for a device, every depth and layout: a
    lock's state is three levels deep."""
    return [f"{BASE}/{device_id}/{leaf}" for leaf in ("state", "availability", "info",
                                                    "lock/state")] + [
        f"{PREFIX}/device/{BASE}/flespi_{device_id}/config"]


class _Acks:
    def __init__(self, count: int) -> None:
        self.count = count
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.done.set_result(None)

    def refused(self, publication: Pub, code: int) -> None:
        if not self.done.done():
            self.done.set_exception(AssertionError(f"the broker refused {publication}: {code}"))


async def seed(broker: mosquitto.Broker, topics: Iterable[str]) -> None:
    """Leave `topics` retained on `broker`, as an earlier run would have."""
    client = MqttClient(broker.host, broker.port, client_id=f"seed-{os.urandom(4).hex()}")
    await client.connect()
    try:
        batch = [(t, orjson.dumps({"from": "an earlier run", "pad": "x" * 200}), True)
                 for t in topics]
        for start in range(0, len(batch), 2000):
            chunk = batch[start:start + 2000]
            acks = _Acks(len(chunk))
            client.publish_many(chunk, 1, acks)
            await asyncio.wait_for(acks.done, 30)
    finally:
        await client.disconnect()


def cleared_counts(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [int(n) for r in caplog.records
            for n in re.findall(r"clearing (\d+) stale retained topics", r.getMessage())]


async def test_a_gone_devices_three_level_topics_are_cleared(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    """A lock's `<base>/<id>/lock/state` of a device deleted while the bridge was down is
    cleared at the next start (the old inventory's `<base>/+/+` never saw it)."""
    await seed(local, device_topics(999))
    bridge = await bridge_factory(make_settings(upstream, local, commands=PROFILES))
    await asyncio.wait_for(bridge.loaded.wait(), 20)
    live = {f"{BASE}/{d}/state" for d in sim.devices}
    # until the gone topics are cleared and every live state is there (a live state can
    # still be on its way when the cleanup is done)
    left = await poll(lambda: retained(local, PAGES),
                      lambda found: not set(device_topics(999)) & set(found)
                      and live <= set(found), 20,
                      lambda found: f"gone topics left: {set(device_topics(999)) & set(found)}; "
                                    f"live states missing: {live - set(found)}",
                      interval=0.2)
    assert all(f"{BASE}/{d}/state" in left for d in sim.devices)


async def test_a_large_fleet_on_a_stock_broker_leaves_no_ghost_and_loses_nothing(
        upstream: mosquitto.Broker, brokers: Brokers, bridge_factory: BridgeFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    """5,000 devices start against a stock Mosquitto holding the topics of 2,000 devices
    gone from flespi: every gone topic is cleared and every live one kept (the one cleanup
    clears exactly the gone topics). Before, the QoS 1 inventory saw ~1,020 topics."""
    caplog.set_level(logging.INFO, logger="bridge.publish.cleanup")
    local = brokers(extra_config=mosquitto.STOCK)
    sim = Simulator(upstream.host, upstream.port, devices=5000, seed=21, messages=False)
    await sim.start()
    try:
        live = {t for d in sim.devices for t in device_topics(d)}
        gone = {t for d in range(9_000_001, 9_002_001) for t in device_topics(d)}
        await seed(local, sorted(live | gone))
        bridge = await bridge_factory(make_settings(upstream, local, commands=PROFILES))
        await asyncio.wait_for(bridge.loaded.wait(), 120)
        # read back one device per filter: an inventory independent of the one under test
        by_device = [f for d in [*sim.devices, *range(9_000_001, 9_002_001)]
                     for f in (f"{BASE}/{d}/#", f"{PREFIX}/device/{BASE}/flespi_{d}/config")]
        await wait_until(lambda: cleared_counts(caplog), 120, "the cleanup")
        left = await poll(lambda: retained(local, by_device, per_page=100),
                          lambda found: not gone & set(found), 60,
                          lambda found: f"{len(gone & set(found))} gone topics left",
                          interval=1.0)
        assert live <= set(left), sorted(live - set(left))[:10]
        assert cleared_counts(caplog) == [len(gone)]
    finally:
        await sim.stop()


async def test_a_failed_inventory_is_retried_and_the_migration_keeps_its_markers(
        tmp_path: Path, upstream: mosquitto.Broker, brokers: Brokers, sim: Simulator,
        bridge_factory: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    """The broker drops the inventory's marker (an ACL here; a broker dropping part of a
    replay drops the marker behind it too), so the inventory times out: discovery waits,
    the inventory is retried, and once it succeeds the configs of the other layout are
    migrated with `migrate_discovery` markers and a gone device's topics cleared. Before,
    the bridge announced without markers and cleared nothing."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite #\ntopic deny {BASE}/bridge/state/+\n")
    local = brokers(extra_config=(f"acl_file {acl}",))
    device_id = next(iter(sim.devices))
    old = f"{PREFIX}/sensor/{BASE}/flespi_{device_id}_battery/config"
    await seed(local, [old, *device_topics(999)])
    async with Recorder(local, [f"{PREFIX}/#"]) as rec:
        bridge = await bridge_factory(make_settings(upstream, local, commands=PROFILES))
        bridge.cleanup.page_timeout = 1.0
        await asyncio.wait_for(bridge.loaded.wait(), 20)
        await wait_until(lambda: caplog.text.count("could not list retained topics") >= 2,
                         20, "two failed inventories")
        early = [m.topic for m in rec.messages if m.payload and not m.retain]
        assert not early, f"discovery announced before the inventory: {early}"
        acl.write_text("topic readwrite #\n")
        assert local.pid is not None
        os.kill(local.pid, signal.SIGHUP)  # the broker reloads its ACL
        await rec.wait_for(lambda: any(m.topic == old and m.payload == MIGRATE
                                       for m in rec.messages), timeout=60,
                           what="the old config handed over")
    await poll(lambda: retained(local, PAGES),
               lambda found: not set(device_topics(999)) & set(found), 20,
               lambda found: "the gone device's topics cleared", interval=0.2)
