"""Cleanup in a split fleet (`bridge.publish.cleanup`): a replica clears only what cannot be
another's. The retained topics an inventory would find are given to `Cleanup.stale`; the
replicas' leases meet on `support.leases`' in-memory retained store."""

from __future__ import annotations

import asyncio

import pytest
from support.leases import BASE, FLEET, Bus, Replica, hashed

from bridge.core.outbox import Outbox
from bridge.core.stats import Stats
from bridge.publish.cleanup import Cleanup
from bridge.publish.local_broker import LocalBroker

PREFIX = "homeassistant"
NODE = "flespi"  # the base topic's: `homeassistant/<component>/<node>/<object id>/config`


def cleanup_of(replica: Replica) -> tuple[Cleanup, Outbox]:
    s = replica.settings
    local = LocalBroker(s.local, s.reconnect, state_topic=replica.renderer.topics.bridge_state,
                        stats=Stats(), events=replica.events, lease=replica.lease)
    outbox = Outbox(lambda: None, lambda _reason: None)
    return Cleanup(replica.store, replica.renderer, outbox, local, asyncio.Event(),
                   replica.events), outbox


def device_topics(device_id: int) -> set[str]:
    """What a device leaves retained: its topics and an entity's discovery config."""
    return {f"{BASE}/{device_id}/state", f"{BASE}/{device_id}/availability",
            f"{BASE}/{device_id}/lock/state",
            f"{PREFIX}/sensor/{NODE}/flespi_{device_id}_gone_sensor/config"}


def pick(ids: set[int], n: int = 3) -> set[int]:
    return set(sorted(ids)[:n])


def shard_zero(**homeassistant: object) -> tuple[Replica, Bus]:
    """Shard 0 of 2; its store holds its own devices (the flespi side replays only those),
    the fleet list every device; shard 2 of 3, online with an older claim (a resize from 3
    under way), still publishes some of shard 0's devices."""
    bus = Bus()
    replica = Replica(0, 2, sections={"homeassistant": homeassistant})
    for device_id in set(FLEET) - hashed(0, 2):
        replica.store.remove(device_id)
    bus.peer(2, 3, since=1.0)
    bus.connect(replica)
    return replica, bus


@pytest.fixture
def zero() -> tuple[Replica, Bus]:
    """`shard_zero` with discovery per entity (an entity's config is a topic of its own)."""
    return shard_zero(discovery_mode="entity")


def test_only_devices_gone_from_the_fleet_and_mine_by_hash_are_cleared(
        zero: tuple[Replica, Bus]) -> None:
    replica, _ = zero
    cleanup, _ = cleanup_of(replica)
    gone_mine = pick(hashed(0, 2) - hashed(2, 3))
    gone_theirs = pick(hashed(1, 2))  # another shard's, gone from the fleet too
    not_yet_replayed = pick(hashed(0, 2) - gone_mine)  # mine, in the fleet, not stored yet
    theirs = pick(hashed(1, 2) - gone_theirs)
    for device_id in gone_mine | gone_theirs | not_yet_replayed:
        replica.store.remove(device_id)
    replica.fleet.ids -= gone_mine | gone_theirs
    inventory = set().union(*(device_topics(d) for d in
                              gone_mine | gone_theirs | not_yet_replayed | theirs))
    assert set(cleanup.stale(inventory)) == set().union(*(device_topics(d) for d in gone_mine))


def test_entities_no_longer_generated_only_of_devices_published_now(
        zero: tuple[Replica, Bus]) -> None:
    replica, bus = zero
    cleanup, _ = cleanup_of(replica)
    published = pick(hashed(0, 2) - hashed(2, 3))
    contested = pick(hashed(0, 2) & hashed(2, 3))  # shard 2 of 3 publishes them still
    assert all(replica.lease.owns(d) for d in published)
    assert not any(replica.lease.owns(d) for d in contested)
    orphans = {d: f"{PREFIX}/sensor/{NODE}/flespi_{d}_removed_sensor/config"
               for d in published | contested}
    assert set(cleanup.stale(set(orphans.values()))) == {orphans[d] for d in published}
    bus.publish(f"{BASE}/bridge/2/state", b"offline")  # the resize went on: ours now
    assert set(cleanup.stale(set(orphans.values()))) == set(orphans.values())


def test_shard_0_clears_retired_replicas_bridge_topics_and_no_live_ones(
        zero: tuple[Replica, Bus]) -> None:
    replica, bus = zero
    one = Replica(1, 2, sections={"homeassistant": {"discovery_mode": "entity"}})
    bus.connect(one)
    bus.peer(3, 4, since=1.0, online=False)  # a replica of a larger N, gone
    bus.publish(f"{BASE}/bridge/state", b"offline")  # the single bridge of before the split

    def bridge(shard: int | None) -> set[str]:
        ident = "flespi_bridge_flespi" + ("" if shard is None else f"_shard_{shard}")
        level = "" if shard is None else f"{shard}/"
        return {f"{BASE}/bridge/{level}state", f"{BASE}/bridge/{level}lease",
                f"{PREFIX}/binary_sensor/{NODE}/{ident}_connection/config",
                f"{PREFIX}/device/{NODE}/{ident}/config"}
    single = bridge(None) - {f"{BASE}/bridge/lease"}
    inventory = single | bridge(0) | bridge(1) | bridge(2) | bridge(3)
    retired = single | bridge(3)
    assert set(cleanup_of(replica)[0].stale(inventory)) == retired
    assert cleanup_of(one)[0].stale(inventory) == []  # never another shard's business
    bus.publish(f"{BASE}/bridge/2/state", b"offline")  # shard 2 of 3 done too
    assert set(cleanup_of(replica)[0].stale(inventory)) == retired | bridge(2)


async def test_a_deleted_device_is_cleared_only_by_the_replica_that_published_it() -> None:
    replica, _ = shard_zero(discovery=False)  # (with discovery its topics go 5 s later)
    cleanup, outbox = cleanup_of(replica)
    [contested] = pick(hashed(0, 2) & hashed(2, 3), 1)
    cleanup.device_removed(replica.store.devices[contested])
    assert len(outbox) == 0  # shard 2 of 3 published it: its to clear
    [published] = pick(hashed(0, 2) - hashed(2, 3), 1)
    cleanup.device_removed(replica.store.devices[published])
    work, _ = outbox.take(100)
    assert {(p.topic, p.payload) for p in work} >= {
        (f"{BASE}/{published}/state", b""), (f"{BASE}/{published}/availability", b"")}
