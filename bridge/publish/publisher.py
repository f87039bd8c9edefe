"""The publisher: dirty devices and the outbox become batches to the local broker, pipelined.

It owns coalescing (the window, counted from the first change since the last flush),
batches of at most `MAX_BATCH` publications, the bound on publications in flight
(`PIPELINE`, applied before every batch, the first included), and requeueing what a failed
batch carried. Each batch settles a claim with the ack ledger, which alone decides what
flespi may be told is done (`bridge.core.ledger`).

Batches are handed over without waiting for the previous one's acknowledgement: waiting
would stall on every broker that delays its acknowledgements (Nagle's algorithm: 40 ms a
batch on stock Mosquitto). When the pipeline is full the publisher waits, and each device's
updates coalesce in the store meanwhile (latest wins).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

from bridge.core.ledger import AckLedger, Claim
from bridge.core.lifecycle import Shutdown
from bridge.core.outbox import Outbox
from bridge.core.stats import Stats
from bridge.core.store import Device, Store
from bridge.core.transport import LocalTransport, Publication, publication_kind
from bridge.exceptions import LocalUnavailableError
from bridge.logs import RateLimitedLog

log = logging.getLogger(__name__)

# Publications handed to the broker in one batch at most (a device's are never split).
MAX_BATCH = 1_000
# Publications awaiting the broker's acknowledgement at most before the next batch waits;
# with MAX_BATCH this keeps far below the 65,535 message ids MQTT has per connection.
PIPELINE = 5_000
# Seconds to wait before retrying after an unexpected error (a bug must not spin).
ERROR_PAUSE = 1.0
# Seconds to wait after the broker refused a batch (connection lost) before trying again.
DEFER_PAUSE = 0.02

Render = Callable[[Device, int], list[Publication]]
_topic = itemgetter(0)  # Publication.topic


@dataclass(slots=True)
class _Batch:
    """One batch handed to the broker and not yet acknowledged by it."""

    claim: Claim
    publications: list[Publication]
    devices: list[tuple[Device, int]]  # (device, flags rendered): marked again on failure
    work: list[Publication]  # outbox work and results carried: requeued on failure
    results: list[Publication]
    since: list[float]  # when its devices' changes arrived (latency histogram)
    future: asyncio.Future[None] = field(init=False)


@dataclass(frozen=True, slots=True)
class Tuning:
    """How the publisher batches, and the stop it flushes within (`shutdown`, shared with
    the rest of the bridge: the grace window, and whether the bridge is failing)."""

    coalesce_window: float = 0.0
    max_batch: int = MAX_BATCH
    pipeline: int = PIPELINE
    error_pause: float = ERROR_PAUSE
    defer_pause: float = DEFER_PAUSE
    shutdown: Shutdown = field(default_factory=Shutdown)
    # which outbox work may go out (a split fleet: a device's messages only from its
    # owner, `bridge.publish.lease`); None: all of it
    admit: Callable[[Publication], bool] | None = None


class Publisher:
    def __init__(self, store: Store, ledger: AckLedger, transport: LocalTransport,
                 render: Render, stats: Stats, tuning: Tuning) -> None:
        self.store = store
        self.ledger = ledger
        self.transport = transport
        self.render = render
        self.stats = stats
        self.latency = stats.latency
        self.window = tuning.coalesce_window
        self.max_batch = tuning.max_batch
        self.pipeline = tuning.pipeline
        self.error_pause = tuning.error_pause
        self.defer_pause = tuning.defer_pause
        self.shutdown = tuning.shutdown
        self.admit = tuning.admit
        self._wake = asyncio.Event()
        self.outbox = Outbox(self._wake.set, self._drop)
        self._inflight: deque[_Batch] = deque()
        self._inflight_size = 0
        self._claimed = 0  # the watermark last claimed
        self._bad = RateLimitedLog(log)
        # monotonic time of the first `wake` since the last flush began: the coalescing
        # window counts from there, so a flush that outlasted the window (a start-up's
        # replay, while flespi waits for acknowledgements) is followed by the next at once
        self._since: float | None = None
        self._hurry = False  # `hurry` since the last flush began

    async def start(self) -> None:
        """Nothing to prepare: `run` is an essential task (`bridge.app.supervisor`)."""

    async def stop(self) -> None:
        """Graceful stop: publish what is pending (and so acknowledge it upstream) while the
        local broker is connected, until the grace window closes or the bridge fails."""
        while not self.idle() and self.transport.connected.is_set() \
                and not self.shutdown.over():
            self.wake()
            await asyncio.sleep(0.02)

    def accepting(self) -> str | None:
        """Why a stream batch cannot be taken now (answered 503), or None."""
        if not self.transport.connected.is_set():
            return "the local broker is not connected"
        if self._inflight_size >= self.pipeline:
            return "the local broker is behind"
        if self.shutdown.failed.is_set():
            return "the bridge is failing"
        return None

    def wake(self) -> None:
        """New work (called once per upstream message)."""
        if self._since is None:
            self._since = time.monotonic()
        self._wake.set()

    def hurry(self) -> None:
        """New work someone waits for (a stream batch being applied): published at once,
        without the coalescing window."""
        self._hurry = True
        self.wake()

    @property
    def in_flight(self) -> int:
        """Publications handed to the broker and not yet acknowledged."""
        return self._inflight_size

    def idle(self) -> bool:
        return not (self.store.has_dirty or self.outbox or self._inflight
                    or self.ledger.watermark() > self._claimed)

    def _drop(self, reason: str) -> None:
        self.stats.dropped[reason] += 1

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # let the rest of the burst arrive; a stream batch waiting to be answered is a
            # whole burst already, and flespi sends no more until it is answered
            if self.window > 0 and self.store.has_dirty and not self._hurry \
                    and not self.ledger.waiting:
                since = self._since if self._since is not None else time.monotonic()
                delay = self.window - (time.monotonic() - since)
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.transport.connected.wait()
            try:
                if not await self._flush() and self.transport.connected.is_set():
                    # the connection is lost and the local side has not said so yet: let it
                    # (retrying at once would never yield to it, and nothing else would run)
                    await asyncio.sleep(self.defer_pause)
            except Exception:
                log.exception("publishing failed; retrying in %ss", self.error_pause)
                self._drop("internal_error")
                await asyncio.sleep(self.error_pause)
                self._wake.set()

    async def _flush(self) -> bool:
        """Hand everything pending to the broker in batches; the last one carries the
        watermark of every flespi message this flush covers. False when the broker could
        not take them (they wait for the next flush)."""
        self._reap()
        mark = self.ledger.watermark()
        owed = len(self.outbox)  # what arrives meanwhile waits for the next flush
        devices = self.store.take_dirty()
        self._since = None
        self._hurry = False
        if not (owed or devices) and mark == self._claimed:
            return True
        start = 0
        try:
            while True:
                await self._room()
                batch, start, owed = self._fill(owed, devices, start)
                last = not owed and start >= len(devices)
                batch.claim = self.ledger.claim(mark if last else 0)
                try:
                    batch.future = self.transport.publish_nowait(batch.publications)
                except Exception as exc:
                    self._failed([batch])
                    if not isinstance(exc, LocalUnavailableError):
                        raise
                    log.debug("publish deferred: %s", exc)
                    return False
                self._handed(batch)
                if last:
                    self._claimed = mark
                    return True
        finally:
            # devices not rendered (deferred, cancelled, or a bug) wait for the next flush;
            # their messages stay unacknowledged until a later claim covers them
            for dev in devices[start:]:
                self.store.mark(dev, 0)

    def _fill(self, owed: int, devices: list[Device], start: int) -> tuple[_Batch, int, int]:
        """The next batch: outbox work and results first, then devices from `start`.
        Returns it with the next device index and what the outbox still owes."""
        work, results = self.outbox.take(min(owed, self.max_batch))
        owed -= len(work) + len(results)
        if self.admit is not None:
            work = list(filter(self.admit, work))
        pubs = [*work, *results]
        batch = _Batch(Claim(0, 0, 0), pubs, [], work, results, [])
        while len(pubs) < self.max_batch and start < len(devices):
            dev = devices[start]
            start += 1
            flags, dev.dirty = dev.dirty, 0
            if not flags:
                continue
            try:
                pubs.extend(self.render(dev, flags))
            except Exception:  # a bug in one device's rendering must not stop the rest
                self._bad.warning("render", "cannot publish device %s: %s", dev.id,
                                  traceback.format_exc())
                self._drop("internal_error")
                continue
            batch.devices.append((dev, flags))
            if dev.changed_at is not None:
                batch.since.append(dev.changed_at)
                dev.changed_at = None
        return batch, start, owed

    def _handed(self, batch: _Batch) -> None:
        # counted in C: once per publication
        self.stats.publications.update(map(publication_kind, map(_topic, batch.publications)))
        self._inflight.append(batch)
        self._inflight_size += len(batch.publications)
        batch.future.add_done_callback(self._reap)

    async def _room(self) -> None:
        while self._inflight and self._inflight_size >= self.pipeline:
            await asyncio.wait({self._inflight[0].future})
            self._reap()

    def _reap(self, _: object = None) -> None:
        """Batches complete in order (the broker acknowledges in order)."""
        failed: list[_Batch] = []
        while self._inflight and self._inflight[0].future.done():
            batch = self._inflight.popleft()
            self._inflight_size -= len(batch.publications)
            future = batch.future
            if future.cancelled() or future.exception() is not None:
                failed.append(batch)
                continue
            done = time.monotonic()
            for started in batch.since:
                self.latency.observe(done - started)
            self.ledger.settle(batch.claim, True)
        if failed:
            self._failed(failed)

    def _failed(self, batches: list[_Batch]) -> None:
        """Nothing of a failed batch counts as published: all of it goes back, in order."""
        self.outbox.requeue([p for b in batches for p in b.work],
                            [p for b in batches for p in b.results])
        for batch in batches:
            for dev, flags in batch.devices:
                self.store.mark(dev, flags)
                if dev.changed_at is None and batch.since:
                    dev.changed_at = min(batch.since)
            self.ledger.settle(batch.claim, False)
        self._wake.set()
