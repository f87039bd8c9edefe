"""The local topic contract (see `docs/topics.md`). Device topics use flespi's
numeric id, never the name: names change and may hold `/`, `+` or `#`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LocalTopics:
    base: str

    @property
    def bridge_state(self) -> str:
        return f"{self.base}/bridge/state"

    def device(self, device_id: int, leaf: str) -> str:
        return f"{self.base}/{device_id}/{leaf}"

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

    def parse_device(self, topic: str) -> tuple[int, str] | None:
        """`<base>/<id>/<rest>` -> (id, rest); None for anything else."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        head, sep, rest = topic[len(prefix):].partition("/")
        if not sep or not head.isascii() or not head.isdigit() or len(head) > 15:
            return None
        device_id = int(head)
        return (device_id, rest) if device_id > 0 else None
