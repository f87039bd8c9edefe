"""A split fleet's subscriptions: what a replica subscribes, what reaches its store, and
what a restart with another shard count unsubscribes (against a recording upstream)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import settings as config
from bridge.core.ledger import Ack
from bridge.core.shards import Fleet, shard_of
from bridge.core.stats import Stats
from bridge.flespi import shard_subscriptions as shard_subs
from bridge.flespi.shard_subscriptions import ShardSubscriptions, expand, levels
from bridge.flespi.topics import STATE_PREFIX, device_filters, subscriptions

PREFIX = "flespi-bridge/replica-1/"
AROUND = device_filters(None, comma_lists=False, messages=True)


class Recording:
    """An upstream that answers every request at once and remembers it."""

    def __init__(self) -> None:
        self.subscribed: list[Sequence[str]] = []
        self.unsubscribed: list[Sequence[str]] = []
        self.published: list[tuple[str, bytes, dict[str, Any]]] = []
        self.connected = True
        self.session_present = True

    async def subscribe(self, filters: Sequence[str], *, resend_retained: bool = True) -> None:
        self.subscribed.append(filters)

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        self.unsubscribed.append(filters)

    def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        self.published.append((topic, payload, kwargs))

    async def connect(self) -> None:
        """Connected from the start."""

    def ack(self, tokens: Iterable[Ack]) -> None:
        """Nothing to acknowledge here."""

    async def wait_closed(self) -> None:
        await asyncio.Event().wait()

    async def disconnect(self) -> None:
        self.connected = False


def part(shards: int = 2, shard: int = 1, *, comma_lists: bool = False
         ) -> tuple[ShardSubscriptions, list[str], Stats]:
    ingested: list[str] = []
    stats = Stats()
    settings = config.load(overrides={
        "flespi": {"token": "t", "host": "mqtt.flespi.io" if comma_lists else "127.0.0.1"},
        "cluster": {"shards": shards, "shard": shard}})
    assert settings.flespi.use_comma_lists == comma_lists
    subs = ShardSubscriptions(
        settings, Fleet(), device_filters(None, comma_lists=comma_lists, messages=True),
        reply_prefix=PREFIX, stats=stats,
        ingest=lambda topic, payload, props: ingested.append(topic))
    return subs, ingested, stats


def flat(packets: list[Sequence[str]]) -> list[str]:
    return [f for p in packets for f in p]


@given(st.sets(st.integers(min_value=1, max_value=10**9), max_size=400),
       st.integers(min_value=10, max_value=200))
def test_comma_list_levels_hold_every_id_once_within_the_bound(ids: set[int], limit: int
                                                               ) -> None:
    made = levels(ids, comma_lists=True, limit=limit)
    members = [int(t) for level in made for t in level.split(",")]
    assert sorted(members) == sorted(ids)
    assert all(len(level) <= limit or "," not in level for level in made)


def test_a_standard_broker_gets_the_one_shard_filters_of_each_device() -> None:
    ids = [5, 17, 3]
    one_shard = subscriptions(ids, None, comma_lists=False, messages=True)
    own = expand(AROUND, levels(ids, comma_lists=False))
    objects = {f"{STATE_PREFIX}{d}" for d in ids}
    assert sorted(own) == sorted(f for f in one_shard if f not in objects)


def test_only_the_own_devices_reach_the_store_and_the_fleet_has_them_all() -> None:
    subs, ingested, stats = part()
    mine = next(d for d in range(1, 100) if shard_of(d, 2) == 1)
    other = next(d for d in range(1, 100) if shard_of(d, 2) == 0)
    for d in (mine, other):
        subs.handle(f"{STATE_PREFIX}{d}", b'{"id":1}', ())
        subs.handle(f"{STATE_PREFIX}{d}/telemetry/battery.level", b"5", ())
        subs.handle(f"flespi/message/gw/devices/{d}", b"{}", ())
    subs.handle(f"{STATE_PREFIX}x1/telemetry/a", b"5", ())  # ingest counts bad topics
    assert ingested == [f"{STATE_PREFIX}{mine}", f"{STATE_PREFIX}{mine}/telemetry/battery.level",
                        f"flespi/message/gw/devices/{mine}", f"{STATE_PREFIX}x1/telemetry/a"]
    assert subs.fleet.ids == {mine, other}
    assert stats.dropped["other_shard"] == 2
    assert stats.upstream_messages["fleet"] == 1
    subs.handle(f"{STATE_PREFIX}{other}", b"", ())  # deleted in flespi
    assert subs.fleet.ids == {mine}


async def start(subs: ShardSubscriptions, up: Recording, *, read_record: bool = False
                ) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Run the part on `up` until the start-up marker would go out."""
    done = asyncio.Event()
    task = asyncio.create_task(subs.run(up, resend_retained=True, read_record=read_record,
                                        subscribed=done.set))
    await asyncio.sleep(0)
    listing = up.published[0][0]
    assert listing.startswith(PREFIX + "list/")
    assert not done.is_set()
    subs.on_reply(listing, b"list")
    await asyncio.wait_for(done.wait(), 5)
    return task, done


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def objects(subs: ShardSubscriptions, ids: range) -> None:
    for d in ids:
        subs.handle(f"{STATE_PREFIX}{d}", b"{}", ())


async def test_the_own_devices_are_subscribed_in_bounded_packets_before_the_marker() -> None:
    subs, _, _ = part(4, 2)
    up = Recording()
    objects(subs, range(1, 2001))
    task, _ = await start(subs, up)
    own = [d for d in range(1, 2001) if shard_of(d, 4) == 2]
    assert sorted(flat(up.subscribed)) == sorted(expand(subs.around, map(str, own)))
    assert all(len(p) <= shard_subs.FILTERS_PER_PACKET for p in up.subscribed)
    topic, payload, kwargs = up.published[-1]
    assert topic == PREFIX + "shards"
    assert kwargs["retain"]
    assert sorted(int(x) for x in orjson.loads(payload)["levels"]) == own
    # a device that appears later is subscribed when its object arrives
    later = next(d for d in range(3000, 3100) if shard_of(d, 4) == 2)
    objects(subs, range(later, later + 1))
    await asyncio.sleep(0.01)
    assert list(up.subscribed[-1]) == expand(subs.around, [str(later)])
    await stopped(task)


async def test_a_restart_with_more_shards_unsubscribes_what_moved_away() -> None:
    ids = range(1, 501)
    old, old_up = part(2, 1)[0], Recording()
    objects(old, ids)
    task, _ = await start(old, old_up)
    await stopped(task)
    record = old_up.published[-1][1]
    new, new_up = part(3, 1)[0], Recording()
    new.on_reply(PREFIX + "shards", record)  # before the listing: ignored, not yet reading
    objects(new, ids)
    task = asyncio.create_task(new.run(new_up, resend_retained=True, read_record=True,
                                       subscribed=lambda: None))
    await asyncio.sleep(0)
    new.on_reply(PREFIX + "shards", record)  # the retained record, read back
    new.on_reply(new_up.published[0][0], b"list")
    await asyncio.sleep(0.01)
    moved = [d for d in ids if shard_of(d, 2) == 1 and shard_of(d, 3) != 1]
    assert moved
    assert sorted(flat(new_up.unsubscribed)) == sorted(expand(new.around, map(str, moved)))
    await stopped(task)


async def test_on_flespi_the_own_ids_share_comma_list_filters() -> None:
    subs, _, _ = part(4, 2, comma_lists=True)
    up = Recording()
    objects(subs, range(5_537_000, 5_547_000))
    task, _ = await start(subs, up)
    filters = flat(up.subscribed)
    own = {d for d in range(5_537_000, 5_547_000) if shard_of(d, 4) == 2}
    id_levels = {f.split("/")[4] for f in filters if f.startswith(STATE_PREFIX)}
    assert {int(t) for level in id_levels for t in level.split(",")} == own
    assert all(len(level) <= shard_subs.GROUP_CHARS for level in id_levels)
    assert len(filters) == len(id_levels) * len(subs.around) < len(own)
    await stopped(task)
