"""A split fleet's upstream subscriptions (`[cluster] shards` > 1, `docs/cluster.md`).

Every replica subscribes to every device object (`flespi/state/gw/devices/+`: retained, low
volume) and to its reply prefix; the ids it sees fill `Fleet.ids` (an empty object: the
device was deleted). For its own ids (`Shard.mine`) it subscribes the device's other filters
(`topics.device_filters`): on flespi (comma lists) several ids share one filter, at most
`GROUP_CHARS` characters of ids in the level; on a standard broker each id has its own.

Per connection (`run`):
1. the listing marker goes out after the base subscriptions and comes back after every
   retained device object: the device list at start (a resumed session replays nothing and
   keeps the list it has);
2. the own ids' filters are subscribed, at most `FILTERS_PER_PACKET` per SUBSCRIBE (from
   the first `LISTING_BATCH` own objects on, so their replay overlaps the listing); then
   whatever the persistent session still holds from a previous run (its retained record,
   read back in step 1) and is not subscribed now is unsubscribed, so a resized replica
   stops receiving the traffic of devices that are no longer its own;
3. the record is published (retained, under the reply prefix) and `subscribed` is called:
   the session sends its start-up marker after every subscription, so `loaded` covers the
   whole shard;
4. devices that appear later are subscribed when their objects arrive; a deleted device's
   filters are unsubscribed when it has a level of its own. The record follows, at most
   every `RECORD_DELAY` seconds.

Invariant: nothing for a device that is not this shard's reaches the store. Device objects
of other shards only fill the fleet (counted as `upstream_messages{kind="fleet"}`); anything
else of theirs (a backlog from before a resize) is counted as `dropped{reason="other_shard"}`.
Both are acknowledged like every message (`bridge.core.ledger`), never published.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence

import orjson

from bridge.config.settings import Settings
from bridge.core.shards import Fleet
from bridge.core.stats import Stats
from bridge.flespi.topics import MESSAGE_PREFIX, STATE_PREFIX, parse_id
from bridge.flespi.upstream import Upstream, UserProperties

log = logging.getLogger(__name__)

# Characters of ids in one comma-list level (flespi): ~120 seven-digit ids per filter.
GROUP_CHARS = 1000
# Topic filters in one SUBSCRIBE or UNSUBSCRIBE packet, and SUBSCRIBEs awaiting their SUBACK.
FILTERS_PER_PACKET = 1000
SUBSCRIBE_WINDOW = 4
# Own devices subscribed together while the device list still arrives.
LISTING_BATCH = 250
# Seconds a changed record waits for more changes before it is published again.
RECORD_DELAY = 5.0

Around = Sequence[tuple[str, str]]  # a device's filters: the text before and after its id
Handler = Callable[[str, bytes, UserProperties], None]


def levels(ids: Iterable[int], comma_lists: bool, limit: int = GROUP_CHARS) -> list[str]:
    """Id levels for `ids`: one per id, or (flespi) sorted comma lists of at most `limit`
    characters each."""
    ordered = sorted(ids)
    if not comma_lists:
        return [str(i) for i in ordered]
    out: list[str] = []
    group: list[str] = []
    size = 0
    for text in map(str, ordered):
        if group and size + 1 + len(text) > limit:
            out.append(",".join(group))
            group, size = [], 0
        size += len(text) + (1 if group else 0)
        group.append(text)
    if group:
        out.append(",".join(group))
    return out


def expand(around: Around, id_levels: Iterable[str]) -> list[str]:
    """Every filter of every level."""
    return [before + level + after for level in id_levels for before, after in around]


def packets(filters: Sequence[str], size: int = FILTERS_PER_PACKET) -> list[Sequence[str]]:
    return [filters[i:i + size] for i in range(0, len(filters), size)]


class ShardSubscriptions:
    def __init__(self, settings: Settings, fleet: Fleet, around: Around, *,
                 reply_prefix: str, stats: Stats, ingest: Handler) -> None:
        """`around` is each own device's filters; `ingest` takes the own devices' messages.
        From `settings`: the shard, comma lists or not, and `flespi.devices` (a selection
        narrows the fleet too)."""
        self.place = settings.cluster.place
        self.fleet = fleet
        self.around = list(around)
        self.comma_lists = settings.flespi.use_comma_lists
        self.reply_prefix = reply_prefix
        self.record_topic = f"{reply_prefix}shards"
        self.stats = stats
        self._ingest = ingest
        devices = settings.flespi.devices
        self._selection = None if devices == "all" else frozenset(devices)
        self._mine: dict[str, bool] = {}  # id level text -> own device (the hot path's cache)
        self.levels: dict[str, list[int]] = {}  # subscribed level -> its ids
        self._level_of: dict[int, str] = {}
        self._wanted: set[int] = set()  # own ids seen, not subscribed yet
        self._gone: set[int] = set()  # own ids deleted, maybe to unsubscribe
        self._changed = asyncio.Event()  # set at `_batch` ids wanted, or one gone
        self._batch = 1
        self._listing = ""  # the listing marker awaited on this connection
        self._listed = asyncio.Event()
        self._reading_record = False
        self.previous: dict[str, object] | None = None  # the record read back at start

    def base_filters(self) -> list[str]:
        return [STATE_PREFIX + "+", self.reply_prefix + "#"]

    # -- the hot path: every upstream message that is not the bridge's own ------------

    def handle(self, topic: str, payload: bytes, props: UserProperties) -> None:
        if topic.startswith(STATE_PREFIX):
            rest = topic[len(STATE_PREFIX):]
            slash = rest.find("/")
            if slash < 0:
                self._object(rest, topic, payload, props)
                return
            text = rest[:slash]
        elif topic.startswith(MESSAGE_PREFIX):
            text = topic[len(MESSAGE_PREFIX):]
        else:
            self._ingest(topic, payload, props)
            return
        mine = self._mine.get(text)
        if mine is None:
            device_id = parse_id(text)
            if device_id is None:  # not a device topic: ingest counts it
                self._ingest(topic, payload, props)
                return
            mine = self._mine[text] = self._own(device_id)
        if mine:
            self._ingest(topic, payload, props)
        else:
            self.stats.dropped["other_shard"] += 1

    def _own(self, device_id: int) -> bool:
        return self.place.mine(device_id) and (self._selection is None
                                               or device_id in self._selection)

    def _object(self, text: str, topic: str, payload: bytes, props: UserProperties) -> None:
        """A device object: the fleet list, and the own devices' state."""
        device_id = parse_id(text)
        if device_id is None:
            self._ingest(topic, payload, props)
            return
        if self._selection is not None and device_id not in self._selection:
            self.stats.upstream_messages["fleet"] += 1
            return
        mine = self._own(device_id)
        if payload:
            self.fleet.ids.add(device_id)
            if mine and device_id not in self._level_of:
                self._wanted.add(device_id)
                self._gone.discard(device_id)
                if len(self._wanted) >= self._batch:
                    self._changed.set()
        else:
            self.fleet.ids.discard(device_id)
            if mine:
                self._wanted.discard(device_id)
                self._gone.add(device_id)
                self._changed.set()
        if mine:
            self._ingest(topic, payload, props)
        else:
            self.stats.upstream_messages["fleet"] += 1

    def on_reply(self, topic: str, payload: bytes) -> bool:
        """The reply prefix's topics of this part (True if it was one): the listing marker
        and the record a previous run left."""
        if topic == self._listing:
            self._listed.set()
            return True
        if topic == self.record_topic:
            if self._reading_record and payload:
                try:
                    record = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    record = None
                if isinstance(record, dict):
                    self.previous = record
                else:
                    log.warning("ignored the unreadable shard record on %s", topic)
            return True
        return False

    # -- per connection ---------------------------------------------------------------

    async def run(self, up: Upstream, *, resend_retained: bool, read_record: bool,
                  subscribed: Callable[[], None]) -> None:
        """Steps 1-4 of the module docstring on the connection `up` (whose base
        subscriptions are made); `read_record`: a fresh process on a resumed session."""
        self._reading_record = read_record
        # every own level again: a session that expired has none of them
        await self._subscribe(up, list(self.levels), resend_retained)
        self._listed.clear()
        self._listing = f"{self.reply_prefix}list/{uuid.uuid4().hex}"
        up.publish(self._listing, b"list", qos=1)
        await self._while_listing(up)
        self._reading_record = False
        self._changed.clear()
        await self._subscribe(up, self._take_wanted(), True)
        await self._drop_gone(up)
        if read_record and self.previous is not None:
            await self._unsubscribe_previous(up, self.previous)
        self._publish_record(up)
        log.info("subscribed the %d devices of shard %d of %d (%d in the fleet)",
                 len(self._level_of), self.place.index, self.place.count,
                 len(self.fleet.ids))
        subscribed()
        await self._follow(up)

    async def _while_listing(self, up: Upstream) -> None:
        """Until the listing marker is back, subscribe the own devices whose objects came,
        `LISTING_BATCH` at a time: their replay overlaps the rest of the listing."""
        self._batch = LISTING_BATCH
        listed = asyncio.ensure_future(self._listed.wait())
        try:
            while not listed.done():
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait({listed, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if self._changed.is_set() and not listed.done():
                    self._changed.clear()
                    await self._subscribe(up, self._take_wanted(), True)
        finally:
            listed.cancel()
            self._batch = 1

    def _take_wanted(self) -> list[str]:
        """Levels for the own ids waiting, now counted as subscribed."""
        ids, self._wanted = self._wanted, set()
        made = levels(ids, self.comma_lists)
        for level in made:
            members = [int(t) for t in level.split(",")]
            self.levels[level] = members
            for device_id in members:
                self._level_of[device_id] = level
        return made

    async def _subscribe(self, up: Upstream, id_levels: Sequence[str],
                         resend_retained: bool) -> None:
        """`SUBSCRIBE_WINDOW` packets in flight: the replay of one flows while the broker
        takes the next (one at a time, each SUBACK queues behind the previous replay)."""
        window = asyncio.Semaphore(SUBSCRIBE_WINDOW)

        async def one(packet: Sequence[str]) -> None:
            async with window:
                await up.subscribe(packet, resend_retained=resend_retained)

        await asyncio.gather(*(one(p) for p in packets(expand(self.around, id_levels))))

    async def _unsubscribe(self, up: Upstream, filters: Sequence[str]) -> None:
        for packet in packets(filters):
            await up.unsubscribe(packet)

    async def _drop_gone(self, up: Upstream) -> bool:
        """Unsubscribe deleted own devices that have a level to themselves (a comma list
        shared with others stays: it costs nothing once the device is gone); True if any."""
        gone, self._gone = self._gone, set()
        alone = [str(d) for d in gone if self.levels.get(str(d)) == [d]]
        for level in alone:
            del self.levels[level]
            del self._level_of[int(level)]
        await self._unsubscribe(up, expand(self.around, alone))
        return bool(alone)

    async def _unsubscribe_previous(self, up: Upstream, record: dict[str, object]) -> None:
        """What the session holds from the run that left `record` and is not subscribed
        now: the devices that moved to other shards (a resize), or changed filters."""
        filters, old_levels = record.get("filters"), record.get("levels")
        if not (isinstance(filters, list) and isinstance(old_levels, list)
                and all(isinstance(f, list) and len(f) == 2 for f in filters)):
            log.warning("ignored the shard record on %s: not one this bridge writes",
                        self.record_topic)
            return
        around = [(str(f[0]), str(f[1])) for f in filters]
        now = set(expand(self.around, self.levels))
        stale = [f for f in expand(around, map(str, old_levels)) if f not in now]
        if stale:
            log.info("unsubscribing %d topic filters of the previous run (shards %s -> %d)",
                     len(stale), record.get("shards"), self.place.count)
            await self._unsubscribe(up, stale)
        self.previous = None

    def _publish_record(self, up: Upstream) -> None:
        """What this session is subscribed to, for the next run to read back."""
        record = {"shards": self.place.count, "shard": self.place.index,
                  "filters": self.around, "levels": list(self.levels)}
        up.publish(self.record_topic, orjson.dumps(record), qos=1, retain=True)

    async def _follow(self, up: Upstream) -> None:
        """Step 4, until the connection ends (the session cancels it)."""
        loop = asyncio.get_running_loop()
        due: float | None = None  # when the changed record is published
        while True:
            try:
                async with asyncio.timeout_at(due):
                    await self._changed.wait()
            except TimeoutError:
                pass
            if self._changed.is_set():
                self._changed.clear()
                made = self._take_wanted()
                await self._subscribe(up, made, True)
                if await self._drop_gone(up) or made:
                    due = due or loop.time() + RECORD_DELAY
            if due is not None and loop.time() >= due:
                self._publish_record(up)
                due = None

