"""The local topic contract (see `docs/topics.md`). Device topics use flespi's
numeric id, never the name: names change and may hold `/`, `+` or `#`.

A device id has one spelling on every local topic: ASCII digits, no leading zero, no sign,
at most 15 digits (`canonical_id`). A broker ACL is written for that spelling (`flespi/+/set`
granted, `flespi/5537057/#` denied), so an alias (`05537057`, `+5537057`, fullwidth digits) must
never be taken for the device: it would pass the ACL's carve-out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CANONICAL_ID = re.compile(r"[1-9][0-9]{0,14}")


def canonical_id(level: str) -> int | None:
    """The device id a topic level spells in the one canonical form, or None."""
    return int(level) if _CANONICAL_ID.fullmatch(level) else None


@dataclass(frozen=True, slots=True)
class LocalTopics:
    base: str
    # this replica's shard when the fleet is split (`[cluster] shards` > 1), else None
    replica: int | None = None

    @property
    def bridge_state(self) -> str:
        """`<base>/bridge/state`; `<base>/bridge/<shard>/state` per replica of a split fleet."""
        return self.bridge_topic(self.replica, "state")

    def bridge_topic(self, replica: int | None, leaf: str) -> str:
        """`<base>/bridge/<leaf>`, or a replica's `<base>/bridge/<replica>/<leaf>`."""
        return f"{self.base}/bridge/{leaf}" if replica is None \
            else f"{self.base}/bridge/{replica}/{leaf}"

    def device(self, device_id: int, leaf: str) -> str:
        return f"{self.base}/{device_id}/{leaf}"

    def device_level(self, level: str, leaf: str) -> str:
        """`<base>/<level>/<leaf>` for the id level exactly as a topic spelled it (where a
        refused alias gets its answer)."""
        return f"{self.base}/{level}/{leaf}"

    def state(self, device_id: int) -> str:
        return f"{self.base}/{device_id}/state"

    def availability(self, device_id: int) -> str:
        return f"{self.base}/{device_id}/availability"

    def info(self, device_id: int) -> str:
        return f"{self.base}/{device_id}/info"

    def connections(self, device_id: int) -> str:
        return f"{self.base}/{device_id}/connections"

    def device_filter(self, leaf: str) -> str:
        """`<base>/+/<leaf>`: a subscription for one leaf of every device."""
        return f"{self.base}/+/{leaf}"

    def split_device(self, topic: str) -> tuple[str, str] | None:
        """`<base>/<level>/<rest>` -> (level, rest), whatever the level spells; None for a
        topic outside the base."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        head, sep, rest = topic[len(prefix):].partition("/")
        return (head, rest) if sep else None

    def parse_device(self, topic: str) -> tuple[int, str] | None:
        """`<base>/<id>/<rest>` -> (id, rest) for a canonical id; None for anything else
        (an alias such as `05537057` included)."""
        split = self.split_device(topic)
        if split is None:
            return None
        device_id = canonical_id(split[0])
        return None if device_id is None else (device_id, split[1])
