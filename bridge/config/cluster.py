"""`[cluster]`: one fleet split over replicas (`docs/cluster.md`).

The shard comes from `cluster.shard`, or else from the host name's trailing ordinal, which is
how a Kubernetes StatefulSet names its pods (`flespi-bridge-2` is shard 2): stable names give
stable shards, and so stable persistent sessions.
"""

from __future__ import annotations

import re
import socket

from pydantic import Field, model_validator

from bridge.config.sections import Section
from bridge.core.shards import Shard

_ORDINAL = re.compile(r"-(\d+)$")


def ordinal(hostname: str) -> int | None:
    """The StatefulSet ordinal at the end of a pod's host name (`name-3` -> 3), or None."""
    match = _ORDINAL.search(hostname.split(".", 1)[0])
    return int(match.group(1)) if match else None


class ClusterSettings(Section):
    """Several replicas sharing one fleet, each device owned by exactly one of them."""

    shards: int = Field(1, ge=1, le=1024, description="replicas the fleet is split over")
    shard: int | None = Field(
        None, ge=0, description="this replica's shard, 0..shards-1 (default: the ordinal "
        "at the end of the host name, as a StatefulSet names its pods)")

    @model_validator(mode="after")
    def _shard_in_range(self) -> ClusterSettings:
        if self.shards > 1 and self.shard is None and ordinal(socket.gethostname()) is None:
            raise ValueError(
                f"shards = {self.shards} needs shard = 0..{self.shards - 1}, or a host name "
                f"ending in -<ordinal> as a StatefulSet's pods have (this host is "
                f"{socket.gethostname()!r})")
        index = self._index()
        if index >= self.shards:
            host = socket.gethostname()
            where = "" if self.shard is not None else f" (from the host name {host!r})"
            raise ValueError(f"shard = {index}{where} is not in 0..{self.shards - 1} "
                             f"(shards = {self.shards})")
        return self

    def _index(self) -> int:
        if self.shard is not None:
            return self.shard
        return 0 if self.shards == 1 else ordinal(socket.gethostname()) or 0

    @property
    def place(self) -> Shard:
        """This replica's shard (in range: the validator checked it)."""
        return Shard(self._index(), self.shards)

    def client_id(self, base: str) -> str:
        """A client id of this replica's own: `<base>-<shard>` when the fleet is split (each
        replica its own persistent session upstream and its own connection locally)."""
        return base if self.shards == 1 else f"{base}-{self._index()}"
