"""Where a bridge's discovery goes: `Context` (prefix, base topic, output, layout) and what
its config topics are; `Entity`, one entity before a layout adds device and origin. A leaf of
`bridge.homeassistant`: the modules that build entities all read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# (platform, entity key, options): an entity before the layout adds device and origin
Entity = tuple[str, str, dict[str, Any]]


def node_id(base_topic: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", base_topic) or "flespi"


@dataclass(frozen=True, slots=True)
class Context:
    prefix: str
    base: str
    output: str = "json"  # json | attribute | both
    expire_after: int = 0
    mode: str = "device"  # device | entity
    # this replica's shard when the fleet is split: each replica is a bridge device of its
    # own in Home Assistant, with its own state topic (its devices' availability)
    replica: int | None = None

    @property
    def uses_json(self) -> bool:
        return self.output in ("json", "both")

    @property
    def node(self) -> str:
        return node_id(self.base)

    @property
    def bridge_identifier(self) -> str:
        node = f"flespi_bridge_{self.node}"
        return node if self.replica is None else f"{node}_shard_{self.replica}"

    @property
    def bridge_state(self) -> str:
        return f"{self.base}/bridge/state" if self.replica is None \
            else f"{self.base}/bridge/{self.replica}/state"

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    @property
    def config_filter(self) -> str:
        return f"{self.prefix}/+/{self.node}/+/config"

    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node}/{object_id}/config"

    def owner(self, topic: str) -> tuple[str, str, str | None] | None:
        """(owner, layout, entity key) of one of this bridge's config topics: the owner is
        `flespi_<device_id>` or the bridge's identifier, the layout `device` or `entity`,
        the key the entity's (None for a device config). None for anything else."""
        parts = topic.split("/")
        head = self.prefix.split("/")
        if (len(parts) != len(head) + 4 or parts[:len(head)] != head
                or parts[-1] != "config" or parts[-3] != self.node):
            return None
        component, object_id = parts[-4], parts[-2]
        bridge = self.bridge_identifier
        if component == "device":
            if object_id == bridge or re.fullmatch(r"flespi_[0-9]+", object_id):
                return object_id, "device", None
            return None
        if object_id.startswith(bridge + "_"):
            return bridge, "entity", object_id[len(bridge) + 1:]
        m = re.fullmatch(r"(flespi_[0-9]+)_(.+)", object_id)
        return (m[1], "entity", m[2]) if m else None
