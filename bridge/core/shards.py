"""Which replica owns which device: `shard_of`, a jump consistent hash of the device id.

Invariants (held here and nowhere else):
- every device id maps to exactly one shard in `range(shards)`, the same on every replica
  and in every release (the hash is fixed: a change would move the whole fleet at once);
- going from N to N+1 shards moves only the devices that land on the new shard N, about
  1/(N+1) of them, and a device only ever moves to a shard that did not exist before; so
  if `shard_of(d, M) < N <= M` then `shard_of(d, N) == shard_of(d, M)`. The resize protocol
  (`bridge.publish.lease`) relies on that: two replicas with different shard counts can
  disagree only about the devices of a shard that exists under the larger count alone.

`shards = 1` is the single bridge: `Shard.mine` is then true for every id, without hashing.
"""

from __future__ import annotations

from dataclasses import dataclass

_MASK = (1 << 64) - 1


def _mix(device_id: int) -> int:
    """splitmix64's finalizer: flespi ids are consecutive integers, jump hashing wants
    uniformly spread 64-bit keys."""
    z = (device_id + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def shard_of(device_id: int, shards: int) -> int:
    """The shard of `device_id` among `shards` (Lamping and Veach, "A Fast, Minimal Memory,
    Consistent Hash Algorithm", 2014)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    key = _mix(device_id)
    b, j = -1, 0
    while j < shards:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's place in the cluster: shard `index` of `count`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} is not in 0..{self.count - 1}")

    @property
    def single(self) -> bool:
        return self.count == 1

    def mine(self, device_id: int) -> bool:
        """Whether the hash gives `device_id` to this shard."""
        return self.count == 1 or shard_of(device_id, self.count) == self.index


class Fleet:
    """Every device id of the whole fleet, all shards, when it is split (`shards` > 1).

    Filled by the flespi side from flespi's retained device objects (a low-volume source,
    subscribed by every replica); read by the local side: which devices are gone (cleanup)
    and which commands name a device no shard has (answered by shard 0 alone). With one
    shard it stays empty: the store already holds every device.
    """

    def __init__(self) -> None:
        self.ids: set[int] = set()
