"""A split fleet on real brokers: replicas as processes, and who wrote what, from the broker.

The local Mosquitto logs at `debug` (`LOGGING`): every PUBLISH it receives names the client
that sent it, and with a split fleet each replica's local client id ends in `-<shard>`
(`flespi-bridge-2`). `Writes` reads that log: which client wrote each device's topics, in
the broker's own order, and when each client said `offline` or left, so "never two replicas
publishing a device at once" is checked from the broker, not from the replicas.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE
from support.helpers import BridgeProcess

BASE = "flespi"
LOCAL_ID = "flespi-bridge"  # the default local client id; a replica's ends in -<shard>
# The local broker's configuration: a stock Mosquitto that logs every PUBLISH with its
# client, and keeps every message for the tests' recorder (a slow reader of three replicas'
# output: past the stock 1,000 queued messages the broker would drop the recorder's copies).
LOGGING = ("log_type debug", "log_type notice", "max_queued_messages 0")
_PUBLISH = re.compile(r"Received PUBLISH from (\S+) \(d\d, q\d, r\d, m\d+, '([^']*)', "
                      r".*\((\d+) bytes\)\)")
_GONE = re.compile(r"(?:Received DISCONNECT from|Client|Socket error on client) ([^\s,]+)"
                   r"(?: disconnected| closed its connection| has exceeded timeout"
                   r"|, disconnecting|$)")
_DEVICE = re.compile(rf"{BASE}/([1-9][0-9]*)/")


@dataclass
class Replica:
    """Replica `shard` of `shards` as a process, its metrics on `port`."""

    proc: BridgeProcess
    shard: int
    shards: int
    port: int


def replica(tmp: Path, upstream: mosquitto.Broker, local: mosquitto.Broker, shards: int,
            shard: int) -> Replica:
    """Replica `shard` of `shards` (its own folder: config and log), not started yet."""
    folder = tmp / f"replica-{shard}-of-{shards}"
    folder.mkdir(exist_ok=True)
    port = mosquitto.free_port()
    proc = BridgeProcess(folder, upstream, local, cluster={"shards": shards, "shard": shard},
                         flespi={"messages": True}, log={"level": "INFO"},
                         commands={"profiles": {str(DEVICE_TYPE_ID): {
                             "restart": SCOOTER_PROFILE["restart"]}}},
                         metrics={"enabled": True, "host": "127.0.0.1", "port": port})
    return Replica(proc, shard, shards, port)


def writer(shard: int) -> str:
    return f"{LOCAL_ID}-{shard}"


@dataclass
class Writes:
    """What the local broker's log says each client published."""

    # device id -> clients that wrote something (not a clear) on its topics
    writers: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    # (device id, first writer, second writer) where the second wrote before the first had
    # said `offline` or left since its own last write: two publishers at once
    overlaps: list[tuple[int, str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, broker: mosquitto.Broker) -> Writes:
        out = cls()
        last: dict[int, str] = {}  # device -> its latest writer
        # client -> devices it wrote since it last said `offline` or left
        holding: dict[str, set[int]] = defaultdict(set)
        text = (broker.workdir / "mosquitto.log").read_text(errors="replace")
        for line in text.splitlines():
            published = _PUBLISH.search(line)
            if published is None:
                gone = _GONE.search(line)
                if gone is not None:
                    holding.pop(gone.group(1), None)
                continue
            client, topic, size = published.group(1), published.group(2), int(published[3])
            if topic.startswith(f"{BASE}/bridge/") and topic.endswith("/state") \
                    and size == len(b"offline"):
                holding.pop(client, None)
                continue
            device = _DEVICE.match(topic)
            if device is None or size == 0 or not client.startswith(LOCAL_ID):
                continue
            d = int(device.group(1))
            out.writers[d].add(client)
            before = last.get(d)
            if before is not None and before != client and d in holding.get(before, ()):
                out.overlaps.append((d, before, client))
            last[d] = client
            holding[client].add(d)
        return out
