"""A split fleet end to end: three replicas (processes) share 3,000 simulated devices on one
local Mosquitto, as a Kubernetes StatefulSet would run them (issue #23).

What a user would notice, checked from the local broker (its log names the client behind
every publication: `support.cluster.Writes`): every device is there, written by exactly one
replica; killing a replica makes its devices, and only those, unavailable in Home Assistant;
its restart brings their backlog; a command is executed and answered once, by the device's
owner, and one for an unknown device once, by shard 0; a rolling resize 3 -> 4 -> 2 with the
fleet reporting never has two replicas writing one device at once, loses nothing, leaves no
topic of a deleted device and no bridge topics of a replica that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from support.cluster import BASE, LOGGING, Replica, Writes, replica, writer
from support.helpers import (
    Brokers,
    Procs,
    Recorder,
    commands_sent,
    expected_state,
    retained,
    wait_metric,
    wait_until,
)

from bridge.core.shards import shard_of
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto

DEVICES = 3_000
PREFIX = "homeassistant"
UNKNOWN = 999_999_999  # an id no shard has
# three replicas, a simulator and the tests' recorder share the machine's cores
pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def watched(brokers: Brokers) -> mosquitto.Broker:
    """The local broker, logging who publishes what."""
    return brokers(extra_config=LOGGING)


@pytest.fixture
async def sim(upstream: mosquitto.Broker) -> AsyncIterator[Simulator]:
    """The conftest's simulator (and so its `responder`), with 3,000 devices."""
    async with Simulator(upstream.host, upstream.port, devices=DEVICES, seed=23) as simulator:
        yield simulator


@pytest.fixture
async def rec(watched: mosquitto.Broker) -> AsyncIterator[Recorder]:
    async with Recorder(watched, [f"{BASE}/#", f"{PREFIX}/#"]) as recorder:
        yield recorder


def owners(ids: object, shards: int) -> dict[int, int]:
    return {d: shard_of(d, shards) for d in ids}  # type: ignore[attr-defined]


def current(rec: Recorder, sim: Simulator, ids: object = None) -> Callable[[], bool]:
    """Whether the local broker holds the current state of `ids` (every device): checked
    again only for those that did not have it yet (the recorder asks at every message)."""
    pending = set(sim.devices if ids is None else ids)  # type: ignore[call-overload]
    expected = {d: expected_state(sim, d) for d in pending}

    def check() -> bool:
        pending.difference_update([d for d in pending if rec.state(BASE, d) == expected[d]])
        return not pending
    return check


def bridge_state(rec: Recorder, shard: int) -> bytes | None:
    item = rec.latest.get(f"{BASE}/bridge/{shard}/state")
    return item.payload if item else None


def availability_topic(rec: Recorder, device_id: int) -> str:
    """The bridge state topic a device's discovery config makes its availability."""
    config = rec.latest[f"{PREFIX}/device/{BASE}/flespi_{device_id}/config"].json()
    (topic,) = [a["topic"] for a in config["availability"] if "/bridge/" in a["topic"]]
    assert config["availability_mode"] == "all"
    return str(topic)


async def up(rec: Recorder, r: Replica) -> None:
    """Until replica `r` (started) has said `online` with a lease of its shard count."""
    def leased() -> bool:
        lease = rec.latest.get(f"{BASE}/bridge/{r.shard}/lease")
        return bridge_state(rec, r.shard) == b"online" and lease is not None \
            and lease.json()["shards"] == r.shards
    await rec.wait_for(leased, timeout=90, what=f"replica {r.shard} of {r.shards} online")


async def stop(r: Replica) -> None:
    """A graceful stop (SIGTERM, as Kubernetes stops a pod), until the process is gone."""
    proc = r.proc.proc
    assert proc is not None
    r.proc.signal(signal.SIGTERM)
    await wait_until(lambda: proc.poll() is not None, timeout=30, what="the replica to stop")
    assert proc.returncode == 0, r.proc.log()[-3000:]


async def everyone_reports(sim: Simulator) -> None:
    for dev in list(sim.devices.values()):
        await sim.step(dev)
    await sim.flush()


async def test_three_replicas_share_the_fleet_and_survive_a_kill(
        tmp_path: Path, upstream: mosquitto.Broker, watched: mosquitto.Broker,
        sim: Simulator, responder: Responder, rec: Recorder, procs: Procs) -> None:
    fleet = sim
    owner = owners(fleet.devices, 3)
    replicas = [replica(tmp_path, upstream, watched, 3, k) for k in range(3)]
    for r in replicas:
        procs(r.proc).start()
    for r in replicas:
        await up(rec, r)
    await rec.wait_for(current(rec, fleet), timeout=120, what="every device's state")
    for r in replicas:
        mine = sum(1 for k in owner.values() if k == r.shard)
        await wait_metric(r.port, "flespi_bridge_shard_devices",
                          lambda v, m=mine: v == m,  # type: ignore[misc]
                          shard=str(r.shard))
        await wait_metric(r.port, "flespi_bridge_shard_info", lambda v: v == 1,
                          shard=str(r.shard), shards="3")
    # Home Assistant: each device's availability is its owner's state topic
    await rec.wait_for(lambda: all(f"{PREFIX}/device/{BASE}/flespi_{d}/config" in rec.latest
                                   for d in fleet.devices), timeout=30, what="discovery")
    assert all(availability_topic(rec, d) == f"{BASE}/bridge/{owner[d]}/state"
               for d in fleet.devices)

    # commands to two devices of every shard, and to an unknown device
    targets = [d for k in range(3) for d in [d for d in fleet.devices if owner[d] == k][:2]]
    for d in [*targets, UNKNOWN]:
        await rec.publish(f"{BASE}/{d}/set", f'{{"command": "restart", "transaction": "t{d}"}}',
                          qos=1)
    results: Callable[[int], list[dict[str, object]]] = lambda d: [  # noqa: E731
        m.json() for m in rec.messages if m.topic == f"{BASE}/{d}/result"]
    await rec.wait_for(lambda: all(results(d) for d in [*targets, UNKNOWN]), timeout=30,
                       what="every command's result")

    # SIGKILL replica 1: its devices, and only those, become unavailable
    replicas[1].proc.kill()
    await rec.wait_for(lambda: bridge_state(rec, 1) == b"offline", what="replica 1's will")
    assert bridge_state(rec, 0) == bridge_state(rec, 2) == b"online"
    await everyone_reports(fleet)  # replica 1's devices report while it is down
    others = [d for d in fleet.devices if owner[d] != 1]
    await rec.wait_for(current(rec, fleet, others), timeout=30, what="the other shards")
    stale = [d for d in fleet.devices if owner[d] == 1]
    assert all(rec.state(BASE, d) != expected_state(fleet, d) for d in stale), \
        "nobody else publishes a killed replica's devices"
    missed = {(d, fleet.devices[d].telemetry["battery.level"][1]) for d in stale}

    restarted = replica(tmp_path, upstream, watched, 3, 1)
    procs(restarted.proc).start()
    await up(rec, restarted)
    await rec.wait_for(current(rec, fleet), timeout=120, what="replica 1's backlog")
    delivered = {(m.json()["device.id"], m.json()["timestamp"]) for m in rec.messages
                 if m.topic.endswith("/message")}
    assert missed <= delivered, "every message sent while replica 1 was down arrives"

    # a last command per shard, so any second answer to the first ones is in by now
    for d in [*targets[::2], UNKNOWN]:
        await rec.publish(f"{BASE}/{d}/set", '{"command": "restart", "transaction": "end"}',
                          qos=1)
    await rec.wait_for(lambda: all(len(results(d)) == 2 for d in [*targets[::2], UNKNOWN]),
                       timeout=30, what="the last commands' results")
    assert all(len(results(d)) == 1 for d in targets[1::2])
    assert [r["transaction"] for d in targets for r in results(d)][:1] == [f"t{targets[0]}"]
    assert results(UNKNOWN)[0]["code"] == "device_not_allowed"
    sent = commands_sent(responder.requests)
    assert sorted(r.uri for r in sent) == sorted(
        f"gw/devices/{d}/commands" for d in [*targets, *targets[::2]]), \
        "each command reached flespi once; the unknown device's never"

    writes = Writes.read(watched)
    assert set(writes.writers) >= set(fleet.devices)
    assert {d: w for d, w in writes.writers.items() if d in owner} == {
        d: {writer(owner[d])} for d in fleet.devices}, "each device written by its owner only"
    assert writes.writers[UNKNOWN] == {writer(0)}, "the unknown device answered by shard 0"
    assert writes.overlaps == []


async def report(sim: Simulator, rate: float) -> None:
    """The fleet keeps reporting (round-robin, `rate` messages a second) until cancelled;
    deleted devices stop."""
    while True:
        for dev in list(sim.devices.values()):
            if dev.id in sim.devices:
                await sim.step(dev)
                await asyncio.sleep(1 / rate)  # pacing the load, not waiting for anything


async def test_a_rolling_resize_3_to_4_to_2_with_the_fleet_reporting(
        tmp_path: Path, upstream: mosquitto.Broker, watched: mosquitto.Broker,
        sim: Simulator, rec: Recorder, procs: Procs) -> None:
    fleet = sim
    replicas = {k: replica(tmp_path, upstream, watched, 3, k) for k in range(3)}
    for r in replicas.values():
        procs(r.proc).start()
    for r in replicas.values():
        await up(rec, r)
    await rec.wait_for(current(rec, fleet), timeout=120, what="every device's state")
    reporting = asyncio.create_task(report(fleet, rate=400))
    gone = sorted(fleet.devices)[:6]

    async def restart(shard: int, shards: int) -> None:
        if shard in replicas:
            await stop(replicas[shard])
        replicas[shard] = replica(tmp_path, upstream, watched, shards, shard)
        procs(replicas[shard].proc).start()
        await up(rec, replicas[shard])

    try:
        # 3 -> 4 as a StatefulSet does it: the new pod, then the others, highest first
        await restart(3, 4)
        for shard in (2, 1):
            await restart(shard, 4)
        for d in gone[:3]:
            await fleet.delete(d)  # deleted while the cluster is resized
        await restart(0, 4)
        # 4 -> 2: the pods beyond 2 go, then the others are updated
        for shard in (3, 2):
            await stop(replicas.pop(shard))
        for d in gone[3:]:
            await fleet.delete(d)  # deleted while their shard is down
        for shard in (1, 0):
            await restart(shard, 2)
    finally:
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
    await fleet.flush()

    await rec.wait_for(current(rec, fleet), timeout=120, what="every device's latest state")
    leaves = ("state", "availability", "info")
    # what a subscriber arriving now finds (max_queued_messages 0: one page holds it all)
    held = await retained(watched, [f"{BASE}/#", f"{PREFIX}/#"], per_page=2)
    assert [t for t in held if any(t.startswith(
        (f"{BASE}/{d}/", f"{PREFIX}/device/{BASE}/flespi_{d}/")) for d in gone)] == [], \
        "every retained topic of the deleted devices is cleared"
    assert [t for t in held if t.startswith((f"{BASE}/bridge/2/", f"{BASE}/bridge/3/"))
            or "_shard_2/" in t or "_shard_3/" in t] == [], \
        "the bridge topics of the replicas that are gone are cleared"
    assert all(f"{BASE}/{d}/{leaf}" in held for d in fleet.devices for leaf in leaves)
    assert all(availability_topic(rec, d) == f"{BASE}/bridge/{shard_of(d, 2)}/state"
               for d in fleet.devices)
    writes = Writes.read(watched)
    assert writes.overlaps == [], "never two replicas publishing one device at once"
    assert set(fleet.devices) <= set(writes.writers)
