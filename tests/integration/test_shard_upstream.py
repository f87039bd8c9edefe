"""A split fleet's upstream side on real brokers: the simulator on a Mosquitto standing in
for flespi, bridges with `[cluster] shards` > 1, each with its own local broker (what each
publishes locally is the local side's; here it shows what each one received).

What a user would notice: each replica gets its own devices' traffic from the broker and
nothing of the others' (never filtered in Python: `dropped{reason="other_shard"}` stays 0),
every replica knows the whole fleet, and a replica restarted with another shard count stops
receiving what is no longer its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from support.helpers import (
    BridgeFactory,
    Brokers,
    Recorder,
    expected_state,
    make_settings,
    retained,
    wait_until,
)

from bridge.app.bridge import Bridge
from bridge.config.settings import Settings
from bridge.core.shards import shard_of
from bridge.flespi.upstream import ConnectOptions, GmqttUpstream
from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import FIRST_ID
from bridge.sim.fleet import Fleet as SimFleet

BASE = "flespi"
DEVICES = 40


@pytest.fixture
async def fleet(upstream: mosquitto.Broker) -> AsyncIterator[Simulator]:
    async with Simulator(upstream.host, upstream.port, devices=DEVICES, seed=3) as simulator:
        yield simulator


def sharded(upstream: mosquitto.Broker, local: mosquitto.Broker, shards: int, shard: int,
            client_id: str = "replica") -> Settings:
    return make_settings(upstream, local, cluster={"shards": shards, "shard": shard},
                         flespi={"client_id": client_id, "messages": True})


def local_devices(rec: Recorder) -> set[int]:
    """The devices whose state the replica published on its local broker."""
    return {int(t.split("/")[1]) for t in rec.latest
            if t.startswith(f"{BASE}/") and t.endswith("/state") and t.split("/")[1].isdigit()}


async def all_states(rec: Recorder, sim: Simulator, ids: set[int]) -> None:
    """Until the replica's local broker holds the simulator's current state of `ids`."""
    await rec.wait_for(lambda: all(rec.state(BASE, d) == expected_state(sim, d) for d in ids),
                       timeout=30, what=f"the states of {sorted(ids)}")


async def steps(sim: Simulator) -> None:
    """Every device reports once more."""
    for dev in list(sim.devices.values()):
        await sim.step(dev)
    await sim.flush()


async def test_each_replica_receives_only_its_own_devices(
        upstream: mosquitto.Broker, brokers: Brokers, fleet: Simulator,
        bridge_factory: BridgeFactory) -> None:
    shards = 3
    locals_ = [brokers() for _ in range(shards)]
    own = [{d for d in fleet.devices if shard_of(d, shards) == k} for k in range(shards)]
    assert all(own), "the seed gives every shard devices"
    recorders = [Recorder(b, [f"{BASE}/#"]) for b in locals_]
    for rec in recorders:
        await rec.__aenter__()
    try:
        replicas: list[Bridge] = [
            await bridge_factory(sharded(upstream, locals_[k], shards, k))
            for k in range(shards)]
        for k, bridge in enumerate(replicas):
            await asyncio.wait_for(bridge.loaded.wait(), 30)
            # loaded: every own device's retained state is in, and the fleet is complete
            assert set(bridge.store.devices) == own[k]
            assert all(bridge.store.devices[d].state() == expected_state(fleet, d)
                       for d in own[k])
            assert bridge.fleet.ids == set(fleet.devices)
        await steps(fleet)
        for k, rec in enumerate(recorders):
            await all_states(rec, fleet, own[k])
            assert local_devices(rec) == own[k]
        for bridge in replicas:
            # the own devices' full messages arrived ...
            await wait_until(lambda b=bridge: b.stats.upstream_messages["message"]  # type: ignore[misc]
                             == len(b.store.devices), what="the own devices' messages")
            # ... and nothing of the other shards but their device objects
            assert bridge.stats.dropped["other_shard"] == 0
            assert bridge.stats.upstream_messages["fleet"] == DEVICES - len(bridge.store.devices)
    finally:
        for rec in recorders:
            await rec.__aexit__()


async def test_a_device_added_later_is_subscribed_by_its_shard_and_deleted_one_leaves(
        upstream: mosquitto.Broker, local: mosquitto.Broker, fleet: Simulator,
        bridge_factory: BridgeFactory) -> None:
    shards, shard = 2, 1
    async with Recorder(local, [f"{BASE}/#"]) as rec:
        bridge = await bridge_factory(sharded(upstream, local, shards, shard))
        await asyncio.wait_for(bridge.loaded.wait(), 30)
        newcomers = Simulator(upstream.host, upstream.port, devices=0)
        newcomers.fleet = SimFleet(8, seed=11, first_id=FIRST_ID + DEVICES)
        mine = {d for d in newcomers.devices if shard_of(d, shards) == shard}
        assert mine, "the seed gives this shard newcomers"
        assert mine != set(newcomers.devices), "... and the other shard too"
        await newcomers.start()
        try:
            await all_states(rec, newcomers, mine)
            assert set(newcomers.devices) <= bridge.fleet.ids
            assert not bridge.store.devices.keys() & (set(newcomers.devices) - mine)
            assert bridge.stats.dropped["other_shard"] == 0
            await steps(newcomers)  # live traffic reaches the newly subscribed devices
            await all_states(rec, newcomers, mine)
            gone = min(mine)
            await newcomers.delete(gone)
            await newcomers.flush()
            await rec.wait_for(lambda: gone not in bridge.fleet.ids, what="the deletion")
            assert gone not in bridge.store.devices
        finally:
            await newcomers.stop()


async def test_a_restart_with_more_shards_stops_receiving_what_moved_away(
        upstream: mosquitto.Broker, local: mosquitto.Broker, fleet: Simulator,
        bridge_factory: BridgeFactory) -> None:
    """Shard 1 of 2, then shard 1 of 3 on the same persistent session: the devices that
    moved to shard 2 are unsubscribed, so their live traffic no longer arrives."""
    before = {d for d in fleet.devices if shard_of(d, 2) == 1}
    after = {d for d in fleet.devices if shard_of(d, 3) == 1}
    moved = before - after
    assert moved, "the seed moves devices"
    assert after <= before, "jump hashing: 2 -> 3 only moves devices to shard 2"
    first = Bridge(sharded(upstream, local, 2, 1))
    await first.start()
    try:
        await asyncio.wait_for(first.loaded.wait(), 30)
        assert set(first.store.devices) == before
    finally:
        await first.stop()
    await steps(fleet)  # a backlog in the session while no replica runs
    async with Recorder(local, [f"{BASE}/#"]) as rec:
        bridge = await bridge_factory(sharded(upstream, local, 3, 1))
        await asyncio.wait_for(bridge.loaded.wait(), 30)
        await all_states(rec, fleet, after)
        backlog = bridge.stats.dropped["other_shard"]
        assert backlog > 0, "the session's backlog of the moved devices is dropped, counted"
        assert set(bridge.store.devices) == after
        await steps(fleet)
        await all_states(rec, fleet, after)
        # the moved devices' live traffic did not come: their filters were unsubscribed
        assert bridge.stats.dropped["other_shard"] == backlog


async def test_after_an_upstream_restart_a_replica_still_gets_its_own_devices_only(
        brokers: Brokers, local: mosquitto.Broker, bridge_factory: BridgeFactory) -> None:
    upstream = brokers(extra_config=mosquitto.FLESPI_LIKE, persistence=True)
    sim = Simulator(upstream.host, upstream.port, devices=12, seed=5)
    await sim.start()
    shards, shard = 2, 0
    own = {d for d in sim.devices if shard_of(d, shards) == shard}
    try:
        async with Recorder(local, [f"{BASE}/#"]) as rec:
            bridge = await bridge_factory(sharded(upstream, local, shards, shard))
            await asyncio.wait_for(bridge.loaded.wait(), 30)
            upstream.stop()  # a graceful restart: the broker saves its sessions
            await wait_until(lambda: not bridge.stats.up["upstream"], what="upstream down")
            upstream.start()
            await wait_until(bridge.ready, timeout=20, what="ready again")
            await steps(sim)
            await all_states(rec, sim, own)
            assert local_devices(rec) == own
            assert bridge.stats.dropped["other_shard"] == 0
    finally:
        await sim.stop()


async def test_a_shrink_ends_the_retired_replicas_flespi_session(
        upstream: mosquitto.Broker, local: mosquitto.Broker, fleet: Simulator,
        bridge_factory: BridgeFactory) -> None:
    """Shard 2 of 3 stops for good (3 -> 2). Shard 0, restarted with 2 shards, finds the
    retired replica offline on the local broker and ends its persistent session upstream:
    flespi no longer queues that session's devices' traffic for nobody, for days."""
    record = "flespi-bridge/replica-2/shards"
    retired = Bridge(sharded(upstream, local, 3, 2))
    await retired.start()
    try:
        await asyncio.wait_for(retired.loaded.wait(), 30)  # its record is out by then
    finally:
        await retired.stop()
    assert record in await retained(upstream, [record])
    assert await session_present(upstream, "replica-2")

    bridge = await bridge_factory(sharded(upstream, local, 2, 0))
    assert bridge.retirement is not None
    await wait_until(lambda: bridge.retirement.ended == ["replica-2"],  # type: ignore[union-attr]
                     timeout=30, what="the retired replica's session ended")
    assert record not in await retained(upstream, [record])
    assert not await session_present(upstream, "replica-2")


async def session_present(broker: mosquitto.Broker, client_id: str) -> bool:
    """Whether the broker still keeps a persistent session for `client_id` (asked as that
    client, which keeps the session it finds)."""
    up = GmqttUpstream(ConnectOptions(broker.host, broker.port, username="", client_id=client_id),
                       lambda *_: None)
    await up.connect()
    try:
        return up.session_present
    finally:
        await up.disconnect()
