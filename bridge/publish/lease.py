"""Which replica of a split fleet publishes which device now: the lease (`docs/cluster.md`).

Invariant (held here and nowhere else): never two replicas publishing a device. Only with
`[cluster] shards` > 1; a single bridge has no lease and publishes every device.

Each replica k says on every local (re)connect, before its `online`, who it is:
`<base>/bridge/<k>/lease`, retained, `{"shard": k, "shards": N_k, "since": <unix time of this
connection>}`; its `<base>/bridge/<k>/state` is `online`, and its will `offline`. Every
replica reads every lease and state (`<base>/bridge/+/lease`, `<base>/bridge/+/state`) and
decides alone, from what it read:

- replica k publishes device d iff `shard_of(d, N_k) == k` and no live peer j (state
  `online`, lease known, j != k) with `shard_of(d, N_j) == j` has the older claim
  `(since_j, j) < (since_k, k)`. The older claim keeps a device; a newcomer waits. Jump
  hashing (`bridge.core.shards`) lets two live replicas both claim d only while they run
  with different N: so only peers with another N are rivals;
- until its own lease (of this connection) has come back, a replica publishes nothing: the
  broker delivers every retained lease and state before it (the filters are subscribed
  before the lease is published). `LocalBroker` holds `connected` until then;
- gaining a device (a rival went offline or reconnected after us, or our view just became
  complete) publishes all of it again (discovery with this replica's state topic as the
  availability, state, availability, info); losing one stops publishing it and clears
  nothing: the new owner publishes over it;
- a graceful stop (`stop()`, just before the local broker says `offline`) releases every
  device at once, so nothing of them is published after the `offline` the new owner acts on;
  a local reconnect starts a new `since` and an empty view.

The handover is ordered by the broker: whatever k published before its `offline` (or before
the lease that made it lose d) reaches the broker before those, and the new owner publishes
only after it read them. A SIGKILL'd replica publishes nothing more; its will says `offline`.
`since` comes from each replica's clock: replicas on hosts whose clocks differ by more than
the time between two connects could order two claims the other way round (NTP keeps
Kubernetes nodes within milliseconds).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from bridge.core.events import DevicesGained, EventHub
from bridge.core.shards import Fleet, shard_of
from bridge.core.store import Device, Store
from bridge.core.topics import canonical_id
from bridge.core.transport import Handler, Publication
from bridge.logs import RateLimitedLog
from bridge.publish.renderer import Renderer

log = logging.getLogger(__name__)
Render = Callable[[Device, int], list[Publication]]
# `flespi_bridge_invalid_inputs_total` of a lease that does not parse (never a claim)
BAD_LEASE = ("local", "bad_lease")


class Lease:
    def __init__(self, renderer: Renderer, store: Store, fleet: Fleet, events: EventHub,
                 invalid: Counter[tuple[str, str]] | None = None) -> None:
        """`fleet`: every device id of the split fleet (filled by the flespi side): a
        command for an id outside it is answered by shard 0 alone. Devices gained are
        said on `events` (`DevicesGained`: the republisher publishes them in full).
        `invalid`: where leases that do not parse are counted (`Stats.invalid`)."""
        place = renderer.settings.cluster.place
        self.index, self.shards = place.index, place.count
        self.topics = renderer.topics
        self.store = store
        self.fleet = fleet
        self.events = events
        self.since = 0.0
        self.complete = False  # our own lease of this connection came back
        self._released = False
        self._leases: dict[int, tuple[int, float]] = {}  # peer -> (shards, since)
        self._online: set[int] = set()
        # a single bridge (`shards = 1`, no lease) still online: it publishes every device,
        # so no replica does until it is gone (going from one replica to several)
        self._single_online = False
        self._rivals: list[tuple[int, int]] = []  # (peer, its shards) with an older claim
        self._owns: dict[int, bool] = {}  # device id -> published by us now
        self._bad = RateLimitedLog(log)
        self._invalid: Counter[tuple[str, str]] = Counter() if invalid is None else invalid
        self._invalid[BAD_LEASE] += 0  # exported as 0 from the start

    # -- the protocol on the local connection (`LocalBroker`) -----------------------------

    def routes(self) -> list[tuple[str, Handler]]:
        """The filters to subscribe on every connect (before `hello`) and their handlers."""
        return [(self.topics.bridge_topic(None, "+/lease"), self._on_lease),
                (self.topics.bridge_topic(None, "+/state"), self._on_state),
                (self.topics.bridge_topic(None, "state"), self._on_single)]

    def wants(self, topic: str) -> bool:
        """Whether `topic` is a lease or a bridge state (read before the view is complete)."""
        return topic.startswith(self.topics.bridge_topic(None, "")) and \
            topic.endswith(("/lease", "/state"))

    def hello(self) -> list[Publication]:
        """A new local connection: a new `since` and an empty view; what to publish before
        `online`."""
        self.since = time.time()
        self.complete = False
        self._leases.clear()
        self._online.clear()
        self._single_online = False
        self._owns.clear()
        lease = {"shard": self.index, "shards": self.shards, "since": self.since}
        return [Publication(self.topics.bridge_topic(self.index, "lease"),
                            orjson.dumps(lease))]

    async def start(self) -> None:
        """Nothing to start: the local connection runs the protocol."""

    async def stop(self) -> None:
        """Release every device: nothing of them is published after this (the local broker
        says `offline` next, and their new owner takes them then)."""
        self._released = True
        self._owns.clear()

    # -- ownership ------------------------------------------------------------------------

    def owns(self, device_id: int) -> bool:
        """Whether this replica publishes `device_id` now."""
        owned = self._owns.get(device_id)
        if owned is None:
            owned = self._owns[device_id] = self._claims(device_id)
        return owned

    def _claims(self, device_id: int) -> bool:
        if not self.complete or self._released or self._single_online \
                or shard_of(device_id, self.shards) != self.index:
            return False
        return all(shard_of(device_id, n) != j for j, n in self._rivals)

    def answers(self, device_id: int | None) -> bool:
        """Whether a command for `device_id` is this replica's to execute and answer: its
        owner's; one for an id no shard has (or no id) is shard 0's."""
        if device_id is None or device_id not in self.fleet.ids:
            return self.index == 0 and self.complete and not self._released
        return self.owns(device_id)

    def count(self) -> int:
        """Devices this replica publishes now."""
        return sum(1 for device_id in self.store.devices if self.owns(device_id))

    def gate(self, render: Render) -> Render:
        """`render` for the devices this replica publishes now; nothing for the others
        (their changes are acknowledged upstream and stay in the store: a device gained
        later is published from there in full)."""
        owns = self.owns

        def gated(dev: Device, flags: int) -> list[Publication]:
            return render(dev, flags) if owns(dev.id) else []
        return gated

    def admits(self, publication: Publication) -> bool:
        """Whether a publication of the outbox may go out: a device's full flespi message
        only from its owner (clears and the bridge's own topics are decided where made)."""
        if not publication.payload:
            return True
        parsed = self.topics.parse_device(publication.topic)
        return parsed is None or self.owns(parsed[0])

    # -- the view ------------------------------------------------------------------------

    def _peer(self, topic: str) -> int | None:
        level = topic.rsplit("/", 2)[-2]
        return 0 if level == "0" else canonical_id(level)

    def _on_lease(self, topic: str, payload: bytes, _retain: bool) -> None:
        peer = self._peer(topic)
        if peer is None:
            return
        if not payload:
            self._leases.pop(peer, None)
        else:
            lease = self._parse(topic, payload)
            if lease is None:
                return
            self._leases[peer] = lease
            if peer == self.index and lease[1] == self.since and not self.complete:
                self.complete = True
                log.info("shard %d of %d: view of the other replicas complete", self.index,
                         self.shards)
                self._decide()
                return
        self._changed()

    def _on_state(self, topic: str, payload: bytes, _retain: bool) -> None:
        peer = self._peer(topic)
        if peer is None:
            return
        if payload == b"online":
            self._online.add(peer)
        else:
            self._online.discard(peer)
        self._changed()

    def _on_single(self, _topic: str, payload: bytes, _retain: bool) -> None:
        online = payload == b"online"
        if online != self._single_online:
            self._single_online = online
            if online:
                log.warning("a bridge with shards = 1 is online on this base topic: this "
                            "replica publishes nothing until it is gone")
            if self.complete and not self._released:
                self._decide()

    def _parse(self, topic: str, payload: bytes) -> tuple[int, float] | None:
        try:
            doc: Any = orjson.loads(payload)
            shards, since = doc["shards"], doc["since"]
            if isinstance(shards, int) and not isinstance(shards, bool) and shards >= 1 \
                    and isinstance(since, int | float) and not isinstance(since, bool):
                return shards, float(since)
        except (orjson.JSONDecodeError, TypeError, KeyError):
            pass
        self._invalid[BAD_LEASE] += 1
        self._bad.warning(f"lease:{topic}", "ignoring the lease on %s: not "
                          '{"shard": k, "shards": N, "since": t}: %.200r', topic, payload)
        return None

    def retired(self, peer: int | None) -> bool:
        """Whether shard 0 clears the bridge topics of replica `peer` (None: a single
        bridge's, from before the fleet was split): a shard that no longer exists under our
        N, and not online."""
        if peer is None:
            return self.index == 0 and self.complete and not self._single_online
        return self.index == 0 and self.complete and peer >= self.shards \
            and peer not in self._online

    def mine(self, device_id: int) -> bool:
        """Whether the hash gives `device_id` to this replica (owned or not)."""
        return shard_of(device_id, self.shards) == self.index

    def _rivals_now(self) -> list[tuple[int, int]]:
        mine = (self.since, self.index)
        return sorted((j, n) for j, (n, since) in self._leases.items()
                      if j != self.index and j in self._online and n != self.shards
                      and (since, j) < mine)

    def _changed(self) -> None:
        """A lease or a state changed: when the view is complete and the rivals changed,
        who owns what is decided again."""
        if self.complete and not self._released and self._rivals_now() != self._rivals:
            self._decide()

    def _decide(self) -> None:
        """Ownership decided again from the view; devices gained are published in full."""
        before, self._rivals, self._owns = self._owns, self._rivals_now(), {}
        gained = [dev for device_id, dev in self.store.devices.items()
                  if self.owns(device_id) and not before.get(device_id, False)]
        if gained:
            self.events.emit(DevicesGained(tuple(gained)))
            log.info("shard %d of %d: publishing %d more devices (rivals now: %s)",
                     self.index, self.shards, len(gained),
                     ", ".join(f"shard {j} of {n}" for j, n in self._rivals) or "none")


def gated(render: Render, lease: Lease | None) -> Render:
    """The publisher's render: `render` itself for a single bridge (no cost on the hot
    path), else only the devices `lease` says are ours."""
    return render if lease is None else lease.gate(render)

