"""The shard assignment (issue #23): every id in exactly one shard, a resize moves few
devices and only to the new shard, and the hash never changes between releases."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.shards import Shard, shard_of

IDS = st.integers(min_value=1, max_value=10**12)
COUNTS = st.integers(min_value=1, max_value=1024)
# Random ids per resize example, and how far the share moved may exceed 1/(N+1): about 4
# standard deviations of a binomial share at this size.
SAMPLE = 10_000
TOLERANCE = 0.02


@given(IDS, COUNTS)
def test_every_id_is_in_exactly_one_shard(device_id: int, shards: int) -> None:
    owners = [k for k in range(shards) if Shard(k, shards).mine(device_id)]
    assert owners == [shard_of(device_id, shards)]


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=1, max_value=63), st.integers(min_value=0, max_value=2**32))
def test_going_to_one_more_shard_moves_about_a_share_and_only_to_the_new_shard(
        shards: int, seed: int) -> None:
    rng = random.Random(seed)
    ids = rng.sample(range(1, 10**10), SAMPLE)
    moved = [d for d in ids if shard_of(d, shards) != shard_of(d, shards + 1)]
    assert len(moved) / SAMPLE <= 1 / (shards + 1) + TOLERANCE
    assert all(shard_of(d, shards + 1) == shards for d in moved)


@given(IDS, COUNTS, COUNTS)
def test_replicas_with_different_counts_disagree_only_about_the_larger_counts_new_shards(
        device_id: int, n: int, m: int) -> None:
    """What the local side's resize protocol relies on (`bridge.core.shards`)."""
    small, large = sorted((n, m))
    if shard_of(device_id, large) < small:
        assert shard_of(device_id, small) == shard_of(device_id, large)


@pytest.mark.parametrize("shards", [2, 3, 4, 8])
def test_consecutive_ids_spread_evenly(shards: int) -> None:
    """flespi hands out consecutive ids: each shard gets its share of a block of them."""
    counts = Counter(shard_of(d, shards) for d in range(5_537_000, 5_547_000))
    fair = 10_000 / shards
    assert set(counts) == set(range(shards))
    assert all(abs(c - fair) <= 0.1 * fair for c in counts.values())


def test_the_assignment_is_fixed_across_releases() -> None:
    """A changed hash would move the whole fleet at the next upgrade: these are pinned."""
    assert [shard_of(d, 4) for d in range(5_537_000, 5_537_012)] == PINNED_4
    assert [shard_of(d, 10) for d in (1, 2, 3, 123_456_789)] == PINNED_10


# computed by the first release with shards (jump hash of splitmix64); never to be changed
PINNED_4 = [3, 3, 0, 3, 1, 2, 3, 1, 3, 2, 3, 1]
PINNED_10 = [9, 0, 4, 4]
