"""Replicas' leases (`bridge.publish.lease`) on an in-memory stand-in for the local broker's
retained store, for unit tests: a connect delivers every retained lease and state, then the
replica's own lease and `online`, in the order `LocalBroker` publishes them; a publication
reaches every connected replica. The protocol itself is driven only through `Lease`'s public
interface (`routes`, `hello`, `owns`, ...)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.config import settings as config
from bridge.core.events import DevicesGained, EventHub
from bridge.core.shards import Fleet, shard_of
from bridge.core.store import Store
from bridge.core.transport import Routes
from bridge.publish.lease import BAD_LEASE, Lease
from bridge.publish.renderer import Renderer

BASE = "flespi"
FLEET = range(1, 3001)


def settings(shard: int, shards: int, **sections: dict[str, Any]) -> config.Settings:
    return config.load(overrides={"flespi": {"token": "t"}, "local": {"base_topic": BASE},
                                  "cluster": {"shard": shard, "shards": shards}, **sections},
                       environment=False)


def hashed(shard: int, shards: int, ids: range = FLEET) -> set[int]:
    """The devices the hash gives to `shard` of `shards`."""
    return {d for d in ids if shard_of(d, shards) == shard}


@dataclass
class Replica:
    """One replica's lease over its own store (holding the whole fleet, as every replica's
    store holds every device it has seen) and what it said on its event hub."""

    shard: int
    shards: int
    ids: range = FLEET
    store: Store = field(default_factory=Store)
    fleet: Fleet = field(default_factory=Fleet)
    events: EventHub = field(default_factory=EventHub)
    invalid: Counter[tuple[str, str]] = field(default_factory=Counter)
    gained: list[set[int]] = field(default_factory=list)  # each DevicesGained's ids
    routes: Routes = field(default_factory=Routes)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # more settings

    def __post_init__(self) -> None:
        self.settings = settings(self.shard, self.shards, **self.sections)
        self.renderer = Renderer(self.settings, {})
        self.lease = Lease(self.renderer, self.store, self.fleet, self.events, self.invalid)
        for device_id in self.ids:
            self.store.device(device_id)
        self.fleet.ids.update(self.ids)
        self.events.subscribe(DevicesGained,
                              lambda e: self.gained.append({d.id for d in e.devices}))
        for topic_filter, handler in self.lease.routes():
            self.routes.add(topic_filter, handler)

    @property
    def owned(self) -> set[int]:
        return {d for d in self.ids if self.lease.owns(d)}

    @property
    def bad_leases(self) -> int:
        return self.invalid[BAD_LEASE]

    def topic(self, leaf: str) -> str:
        return f"{BASE}/bridge/{self.shard}/{leaf}"


class Bus:
    """The local broker's retained lease and state topics, and the replicas connected."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.connected: list[Replica] = []

    def publish(self, topic: str, payload: bytes) -> None:
        """A retained publication (an empty payload clears), delivered to every replica."""
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)
        for replica in self.connected:
            replica.routes.dispatch(topic, payload, True)

    def connect(self, replica: Replica, *, own_lease_back: bool = True) -> bytes:
        """`LocalBroker`'s hello: subscribed, the lease and `online` published, then the
        retained leases and states read before them. Returns the lease payload; with
        `own_lease_back` False it is retained but not yet delivered to `replica` itself."""
        if replica in self.connected:
            self.connected.remove(replica)
        [lease] = replica.lease.hello()  # the connection reads nothing before this
        for topic, payload in list(self.retained.items()):
            replica.routes.dispatch(topic, payload, True)
        assert lease.topic == replica.topic("lease")
        others = list(self.connected)
        self.connected.append(replica)
        for target in others + ([replica] if own_lease_back else []):
            target.routes.dispatch(lease.topic, lease.payload, True)
        self.retained[lease.topic] = lease.payload
        self.publish(replica.topic("state"), b"online")
        return lease.payload

    def disconnect(self, replica: Replica) -> None:
        """Its will (or its graceful `offline`): its state says `offline`."""
        self.connected.remove(replica)
        self.publish(replica.topic("state"), b"offline")

    def peer(self, shard: int, shards: int, since: float, *, online: bool = True) -> None:
        """Another replica's retained lease (and state), as a process would leave them."""
        self.publish(f"{BASE}/bridge/{shard}/lease",
                     orjson.dumps({"shard": shard, "shards": shards, "since": since}))
        if online:
            self.publish(f"{BASE}/bridge/{shard}/state", b"online")
