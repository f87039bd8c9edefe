"""The upstream session: the connection loop to flespi, its subscriptions, and knowing when
the full upstream state has arrived (`loaded`).

`loaded` is set only by the start-up marker: a message the bridge publishes to its own reply
prefix right after subscribing, which flespi delivers after every retained message the
subscriptions replay. Nothing else sets it — stale local topics are cleared only once it is
set, so a slow start-up can never make live devices look gone.

The session's own topics (the reply prefix: the marker and REST answers) are taken here;
everything else goes to ingest, then the publisher is woken: the hot path, direct calls.
With the fleet split over replicas (`[cluster] shards` > 1) the subscriptions, and which
messages reach ingest, are `bridge.flespi.shard_subscriptions`'s; the marker then goes out
once the shard's own devices are subscribed. One shard is the code path it always was.
`UpstreamLink` is built before the session so that REST over MQTT exists before the parts
that call it (device type look-ups, commands) and the session is the one to connect it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Callable

from bridge.config.sections import FlespiSettings
from bridge.config.settings import Settings
from bridge.config.tls import flespi_tls_context
from bridge.core.backoff import Backoff
from bridge.core.ledger import Ack, AckLedger
from bridge.core.shards import Fleet
from bridge.exceptions import UpstreamError
from bridge.flespi import topics as flespi_topics
from bridge.flespi.ingest import Ingest
from bridge.flespi.rest import MqttRest
from bridge.flespi.shard_subscriptions import ShardSubscriptions
from bridge.flespi.upstream import (
    ConnectOptions,
    GmqttUpstream,
    MessageHandler,
    Upstream,
    UserProperties,
)

log = logging.getLogger(__name__)

UpstreamFactory = Callable[[ConnectOptions, MessageHandler], Upstream]
# Seconds between warnings while the start-up marker has not come back.
MARKER_WARNING = 60.0


class UpstreamLink:
    """The connection to flespi as others see it: how one is made (`factory`: the tests'
    seam), the one open now (`current`, None between connections), and REST over MQTT
    (`rest`), which rides on it and is answered on `reply_prefix`."""

    def __init__(self, settings: FlespiSettings, factory: UpstreamFactory = GmqttUpstream
                 ) -> None:
        self.factory = factory
        # The bridge's own topics upstream: fixed per client id, since the persistent session
        # keeps the subscription; each run's start-up marker and each request are unique.
        self.reply_prefix = f"flespi-bridge/{settings.client_id}/"
        self.current: Upstream | None = None
        self.rest = MqttRest(lambda: self.current, self.reply_prefix)


class UpstreamSession:
    def __init__(self, settings: Settings, ingest: Ingest, ledger: AckLedger, *,
                 link: UpstreamLink, wake: Callable[[], None], fleet: Fleet | None = None
                 ) -> None:
        """`ingest` takes each upstream message (`wake` the publisher after it); the
        parameters subscribed to are those of its table. `fleet` is filled with every
        device id when the fleet is split."""
        self.settings = settings
        self.ledger = ledger
        self.stats = ingest.stats
        self.link = link
        self.ingest = ingest.handle
        self._wake = wake
        self._parameters = ingest.params.subscribed()
        self.reply_prefix = link.reply_prefix
        self._marker = f"{self.reply_prefix}sync/{uuid.uuid4().hex}"
        self.rest = link.rest
        # Built once, at start: a bad CA file is a start-up error, not a dead loop.
        self._tls = flespi_tls_context(settings.flespi)
        self.loaded = asyncio.Event()
        self._stopping = asyncio.Event()
        self.shards: ShardSubscriptions | None = None
        if not settings.cluster.place.single:
            self.shards = ShardSubscriptions(
                settings, Fleet() if fleet is None else fleet, self._device_filters(),
                reply_prefix=self.reply_prefix, stats=self.stats, ingest=ingest.handle)
            self.ingest = self.shards.handle

    @property
    def upstream(self) -> Upstream | None:
        return self.link.current

    async def start(self) -> None:
        """Nothing to prepare: `run` is an essential task (`bridge.app.supervisor`)."""

    @property
    def connected(self) -> bool:
        return self.upstream is not None and self.upstream.connected

    def subscriptions(self) -> list[str]:
        """The filters subscribed at connect: with a split fleet only the device objects
        and the reply prefix (the own devices' filters follow, `shard_subscriptions`)."""
        if self.shards is not None:
            return self.shards.base_filters()
        f = self.settings.flespi
        filters = flespi_topics.subscriptions(
            f.devices,
            self._parameters if f.use_comma_lists else None,
            comma_lists=f.use_comma_lists,
            messages=f.messages,
            settings=self.settings.commands.settings,
            telemetry=f.telemetry,
        )
        return [*filters, self.reply_prefix + "#"]

    def _device_filters(self) -> list[tuple[str, str]]:
        f = self.settings.flespi
        return flespi_topics.device_filters(
            self._parameters if f.use_comma_lists else None,
            comma_lists=f.use_comma_lists,
            messages=f.messages,
            settings=self.settings.commands.settings,
            telemetry=f.telemetry,
        )

    def connect_options(self, client_id: str | None = None) -> ConnectOptions:
        """How this bridge connects to flespi (as `client_id`: another session of the same
        token, which ending a retired replica's session needs)."""
        f = self.settings.flespi
        return ConnectOptions(
            host=f.host,
            port=f.port,
            username=f.token.get_secret_value(),
            client_id=client_id or f.client_id,
            tls=self._tls,
            keepalive=f.keepalive,
            session_expiry=f.session_expiry,
            receive_maximum=f.max_inflight,
        )

    def on_message(self, topic: str, payload: bytes, props: UserProperties,
                   ack: Ack | None) -> None:
        """Hot path: once per upstream message."""
        if ack is not None:
            self.ledger.received(ack)
        try:
            if topic.startswith(self.reply_prefix):
                self.on_reply(topic, payload, props)
            else:
                self.ingest(topic, payload, props)
        except Exception:  # a bug must not stop the stream; the message is still acked
            log.exception("cannot process the upstream message on %.200r", topic)
            self.stats.dropped["internal_error"] += 1
        self._wake()

    def on_reply(self, topic: str, payload: bytes, props: UserProperties) -> None:
        """The bridge's own topics: the start-up marker, REST answers (and a split fleet's
        listing marker and record)."""
        if topic == self._marker:
            if not self.loaded.is_set():
                log.info("initial state loaded from flespi")
                self.loaded.set()
        elif self.shards is None or not self.shards.on_reply(topic, payload):
            self.rest.on_reply(topic, payload, props)

    async def run(self) -> None:
        """Stay connected until `stop`."""
        r, f = self.settings.reconnect, self.settings.flespi
        backoff = Backoff(r.min_delay, r.max_delay)
        fresh = True  # this process has no state yet: it needs the retained replay
        attempts = 0
        while not self._stopping.is_set():
            up = self.link.factory(self.connect_options(), self.on_message)
            # before the first message can arrive: an ack released meanwhile must reach it
            self.ledger.attach(up.ack)
            try:
                await up.connect()
                resend = fresh or not up.session_present
                await up.subscribe(self.subscriptions(), resend_retained=resend)
                self.link.current = up
                if attempts:
                    self.stats.reconnects["upstream"] += 1
                attempts += 1
                self.stats.up["upstream"] = True
                log.info("connected to flespi %s:%s (session %s)", f.host, f.port,
                         "resumed" if up.session_present else "new")
                work = None
                if self.shards is None:
                    self._send_marker(up)
                else:  # the marker follows the shard's own subscriptions
                    work = asyncio.create_task(self.shards.run(
                        up, resend_retained=resend, read_record=fresh and up.session_present,
                        subscribed=functools.partial(self._send_marker, up)))
                fresh = False
                backoff.reset()
                try:
                    await self._watch(up, work)
                finally:
                    if work is not None:
                        work.cancel()
                        with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                            await work
                if not self._stopping.is_set():
                    log.warning("connection to flespi lost")
            except UpstreamError as exc:
                log.warning("flespi: %s", exc)
            finally:
                self.link.current = None
                self.stats.up["upstream"] = False
                self.rest.connection_lost()
                self.ledger.void()  # flespi redelivers whatever was not acknowledged
                await up.disconnect()
            if self._stopping.is_set():
                break
            delay = backoff.next()
            log.info("reconnecting to flespi in %.1fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _send_marker(self, up: Upstream) -> None:
        # Everything the broker queued before this marker reaches us first.
        up.publish(self._marker, b"sync", qos=1)

    async def _watch(self, up: Upstream, work: asyncio.Task[None] | None) -> None:
        """Wait for the connection to close (or `work` on it to fail: an `UpstreamError`),
        warning while the marker is overdue."""
        closed = asyncio.ensure_future(up.wait_closed())
        try:
            while True:
                waiting = {closed} if work is None or work.done() else {closed, work}
                done, _ = await asyncio.wait(waiting, timeout=MARKER_WARNING,
                                             return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    return
                if work is not None and work in done:
                    work.result()  # its error ends the connection; normally it runs on
                    continue
                if not self.loaded.is_set():
                    log.warning(
                        "the start-up marker on %s has not come back after %ss: stale local "
                        "topics are not cleared and /readyz stays 503 until it does (the "
                        "replay may still be running, or the token may not publish and "
                        "subscribe there)", self.reply_prefix + "#", MARKER_WARNING)
        finally:
            closed.cancel()

    async def stop(self) -> None:
        self._stopping.set()
        up = self.upstream
        if up is not None:
            await up.disconnect()
