"""The lease (`bridge.publish.lease`): which replica of a split fleet publishes which device.
Replicas meet on an in-memory stand-in for the local broker's retained lease and state topics
(`support.leases`); everything is read through `Lease`'s public interface."""

from __future__ import annotations

import logging

import orjson
import pytest
from support.leases import BASE, FLEET, Bus, Replica, hashed

from bridge.core.shards import shard_of
from bridge.core.store import Device
from bridge.core.transport import Publication

# A resize from 3 to 4 replicas: shard 3 of 4 takes about a quarter of every old shard's
# devices; CONTESTED are the ones shard 0 of 3 holds, which both may claim.
CONTESTED = hashed(0, 3) & hashed(3, 4)


def never_two_owners(*replicas: Replica) -> None:
    for device_id in FLEET:
        owners = [r.shard for r in replicas if r.lease.owns(device_id)]
        assert len(owners) <= 1, f"device {device_id} published by shards {owners}"


def test_a_replica_publishes_nothing_until_its_own_lease_has_come_back() -> None:
    bus, replica = Bus(), Replica(0, 3)
    bus.peer(1, 3, since=1.0, online=False)
    bus.peer(2, 3, since=1.0)
    bus.publish(replica.topic("lease"),  # a lease of this replica's previous connection
                orjson.dumps({"shard": 0, "shards": 3, "since": 1.0}))
    lease = bus.connect(replica, own_lease_back=False)
    assert not replica.lease.complete
    assert replica.owned == set()
    assert replica.lease.count() == 0
    assert not replica.lease.answers(next(iter(hashed(0, 3))))
    assert not replica.lease.answers(None)  # not even shard 0's unknown-device commands
    assert replica.gained == []

    replica.routes.dispatch(replica.topic("lease"), lease, True)
    assert replica.lease.complete
    assert replica.owned == hashed(0, 3)
    assert replica.lease.count() == len(hashed(0, 3))
    assert replica.gained == [hashed(0, 3)]  # all of each published in full


@pytest.mark.parametrize("first", ["old", "new"])
def test_the_older_claim_keeps_a_device_and_the_newcomer_waits(first: str) -> None:
    """Both orders of start: whoever connected first keeps the contested devices."""
    bus, old, new = Bus(), Replica(0, 3), Replica(3, 4)
    assert CONTESTED
    bus.connect(old if first == "old" else new)
    bus.connect(new if first == "old" else old)
    keeper, waiter = (old, new) if first == "old" else (new, old)
    assert keeper.owned == hashed(keeper.shard, keeper.shards)
    assert waiter.owned == hashed(waiter.shard, waiter.shards) - CONTESTED
    never_two_owners(old, new)
    # the waiter's gate renders nothing of a contested device, and its outbox lets none of
    # its full messages out; the keeper's do
    device = Device(next(iter(CONTESTED)))
    message = Publication(f"{BASE}/{device.id}/message", b"{}")
    for replica, publishes in ((keeper, True), (waiter, False)):
        rendered = replica.lease.gate(lambda dev, _flags: [message])(device, 0)
        assert rendered == ([message] if publishes else [])
        assert replica.lease.admits(message) is publishes
        assert replica.lease.answers(device.id) is publishes
    # clears and the bridge's own topics are never held back
    assert waiter.lease.admits(Publication(message.topic, b""))
    assert waiter.lease.admits(Publication(f"{BASE}/bridge/3/state", b"online"))


def test_a_tie_of_since_goes_to_the_lower_index() -> None:
    old, new = Replica(0, 3), Replica(3, 4)
    for replica, peer in ((old, (3, 4)), (new, (0, 3))):
        bus = Bus()
        bus.connect(replica)
        bus.peer(*peer, since=replica.lease.since)
    assert old.owned == hashed(0, 3)
    assert new.owned == hashed(3, 4) - CONTESTED


def test_a_peer_that_is_offline_or_has_no_lease_claims_nothing() -> None:
    bus, new = Bus(), Replica(3, 4)
    bus.connect(new)
    older = new.lease.since - 60
    bus.peer(0, 3, since=older, online=False)  # a lease left behind, its replica offline
    assert new.owned == hashed(3, 4)
    bus.publish(f"{BASE}/bridge/1/state", b"online")  # online, but no lease
    assert new.owned == hashed(3, 4)
    bus.publish(f"{BASE}/bridge/0/state", b"online")
    assert new.owned == hashed(3, 4) - CONTESTED
    bus.publish(f"{BASE}/bridge/0/lease", b"")  # its lease cleared: no claim left
    assert new.owned == hashed(3, 4)


def test_a_peer_with_the_same_shard_count_is_never_a_rival() -> None:
    bus, replica = Bus(), Replica(1, 3)
    bus.connect(replica)
    for peer in (0, 2):
        bus.peer(peer, 3, since=replica.lease.since - 60)
    assert replica.owned == hashed(1, 3)


@pytest.mark.parametrize("payload", [
    b"not json", b"\xff\xfe{", b"[]", b'"lease"', b"3", b"{}", b'{"shard": 0}',
    b'{"shards": 3}', b'{"since": 1.0}', b'{"shards": 0, "since": 1.0}',
    b'{"shards": -3, "since": 1.0}', b'{"shards": 3.5, "since": 1.0}',
    b'{"shards": "3", "since": 1.0}', b'{"shards": true, "since": 1.0}',
    b'{"shards": 3, "since": "long ago"}', b'{"shards": 3, "since": true}',
    b'{"shards": 3, "since": null}',
])
def test_a_bad_lease_is_logged_counted_and_no_claim(
        payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    bus, new = Bus(), Replica(3, 4)
    bus.connect(new)
    caplog.set_level(logging.WARNING, logger="bridge.publish.lease")
    bus.publish(f"{BASE}/bridge/0/state", b"online")
    bus.publish(f"{BASE}/bridge/0/lease", payload)  # shard 0 online, its lease garbled
    assert new.owned == hashed(3, 4)
    assert new.bad_leases == 1
    assert f"ignoring the lease on {BASE}/bridge/0/lease" in caplog.text
    # nothing else is held up: a good lease after it counts
    bus.peer(0, 3, since=new.lease.since - 60)
    assert new.owned == hashed(3, 4) - CONTESTED
    assert new.bad_leases == 1


def test_a_lease_on_a_topic_naming_no_shard_is_ignored() -> None:
    bus, new = Bus(), Replica(3, 4)
    bus.connect(new)
    for level in ("x", "00", "-1"):
        bus.publish(f"{BASE}/bridge/{level}/state", b"online")
        bus.publish(f"{BASE}/bridge/{level}/lease",
                    orjson.dumps({"shard": 0, "shards": 3, "since": 1.0}))
    assert new.owned == hashed(3, 4)


def test_devices_are_gained_when_a_rival_goes_offline_or_reconnects_after_us() -> None:
    bus, old, new = Bus(), Replica(0, 3), Replica(3, 4)
    bus.connect(old)
    bus.connect(new)
    assert new.gained == [hashed(3, 4) - CONTESTED]
    bus.disconnect(old)  # its will: offline
    assert new.gained[1:] == [CONTESTED]
    assert new.owned == hashed(3, 4)
    bus.connect(old)  # back, now the newcomer: it waits
    assert old.owned == hashed(0, 3) - CONTESTED
    never_two_owners(old, new)

    bus.connect(new)  # a local reconnect of `new`: a new `since`, younger than old's
    assert new.owned == hashed(3, 4) - CONTESTED
    assert old.gained[-1] == CONTESTED
    assert old.owned == hashed(0, 3)
    never_two_owners(old, new)


async def test_stop_releases_every_device_and_gains_none_after() -> None:
    bus, old, new = Bus(), Replica(0, 3), Replica(3, 4)
    bus.connect(old)
    bus.connect(new)
    await new.lease.stop()
    assert new.owned == set()
    assert new.lease.count() == 0
    assert not new.lease.answers(next(iter(hashed(3, 4) - CONTESTED)))
    gained = len(new.gained)
    bus.disconnect(old)  # what would have handed devices over: nothing once stopped
    assert len(new.gained) == gained
    assert new.owned == set()

    await old.lease.stop()
    assert not old.lease.answers(None)  # shard 0 answers no unknown device either


def test_a_single_bridge_online_blocks_every_replica(caplog: pytest.LogCaptureFixture) -> None:
    bus, replicas = Bus(), [Replica(k, 2) for k in range(2)]
    bus.publish(f"{BASE}/bridge/state", b"online")  # a bridge with shards = 1
    for replica in replicas:
        bus.connect(replica)
        assert replica.owned == set()
        assert replica.gained == []
    assert "a bridge with shards = 1 is online" in caplog.text
    bus.publish(f"{BASE}/bridge/state", b"offline")
    for replica in replicas:
        assert replica.owned == hashed(replica.shard, 2)
        assert replica.gained == [hashed(replica.shard, 2)]
    bus.publish(f"{BASE}/bridge/state", b"online")  # back (a roll-back to one bridge)
    assert all(replica.owned == set() for replica in replicas)


def test_shard_0_alone_retires_the_bridge_topics_of_shards_gone_and_offline() -> None:
    bus, zero, one = Bus(), Replica(0, 2), Replica(1, 2)
    assert not zero.lease.retired(3)  # before its view is complete: nothing
    bus.peer(2, 3, since=1.0)  # still online
    bus.peer(3, 4, since=1.0, online=False)
    bus.publish(f"{BASE}/bridge/state", b"offline")  # the single bridge of before
    bus.connect(zero)
    bus.connect(one)
    assert zero.lease.retired(3)
    assert not zero.lease.retired(2)  # online
    assert not zero.lease.retired(1)  # a shard of ours
    assert zero.lease.retired(None)
    assert not any(one.lease.retired(peer) for peer in (None, 1, 2, 3))
    bus.publish(f"{BASE}/bridge/2/state", b"offline")
    assert zero.lease.retired(2)
    bus.publish(f"{BASE}/bridge/state", b"online")
    assert not zero.lease.retired(None)


def test_commands_go_to_the_owner_and_unknown_devices_to_shard_0() -> None:
    bus, replicas = Bus(), [Replica(k, 3) for k in range(3)]
    for replica in replicas:
        bus.connect(replica)
    for device_id in (*FLEET[:30], None, 10**9):
        answering = [r.shard for r in replicas if r.lease.answers(device_id)]
        known = device_id is not None and device_id in FLEET
        assert answering == ([shard_of(device_id, 3)] if known else [0])
