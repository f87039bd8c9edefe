"""Wiring: the upstream and local connection loops, the publisher, start-up and shutdown.

Data path: upstream message -> `_on_upstream` (parse, normalize, merge into the store,
remember the ack) -> `_publisher` (coalesce dirty devices, publish to the local broker,
then acknowledge upstream everything that publish covered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from bridge import catalog
from bridge.backoff import Backoff
from bridge.config import Settings
from bridge.flespi import topics as flespi_topics
from bridge.flespi.topics import Kind
from bridge.flespi.upstream import (
    Ack,
    ConnectOptions,
    GmqttUpstream,
    MessageHandler,
    Upstream,
    UpstreamError,
    tls_context,
)
from bridge.local import LocalBroker, LocalUnavailableError, Publication
from bridge.logs import RateLimitedLog
from bridge.metrics import HealthServer, Metrics
from bridge.state import AVAILABILITY, INFO, STATE, Device, Store
from bridge.topics import LocalTopics

log = logging.getLogger(__name__)

UpstreamFactory = Callable[[ConnectOptions, MessageHandler], Upstream]
# Upstream payloads larger than this are rejected unparsed (flespi values are small).
MAX_UPSTREAM_PAYLOAD = 256 * 1024


class Bridge:
    def __init__(
        self,
        settings: Settings,
        *,
        upstream_factory: UpstreamFactory = GmqttUpstream,
    ) -> None:
        self.settings = settings
        self.catalog = catalog.build(settings.flespi.extra_parameters)
        attrs = catalog.attributes(self.catalog)
        self.store = Store()
        self.topics = LocalTopics(settings.local.base_topic)
        self.metrics = Metrics(
            self.store,
            [attrs[name] for name in settings.metrics.fleet_parameters if name in attrs],
            settings.metrics.max_devices,
        )
        self.stats = self.metrics.stats
        self._upstream_factory = upstream_factory
        self.upstream: Upstream | None = None
        self._reply_prefix = f"flespi-bridge/{settings.flespi.client_id}/{uuid.uuid4().hex[:8]}/"
        self._sync_topic = self._reply_prefix + "sync"
        self._acks: deque[Ack] = deque()
        self._wake = asyncio.Event()
        self._pending_since: dict[int, float] = {}
        self.loaded = asyncio.Event()  # the initial retained state has arrived
        self.local = LocalBroker(
            settings.local,
            settings.reconnect,
            state_topic=self.topics.bridge_state,
            subscriptions=[],
            on_message=self._on_local,
            on_connect=self._on_local_connect,
            on_disconnect=lambda: self._set_up("local", False),
        )
        self._bad = RateLimitedLog(log)
        self.stats.queues.update({
            "upstream_acks": lambda: len(self._acks),
            "dirty_devices": lambda: len(self.store._dirty),
        })
        self.health: HealthServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()

    # -- readiness ---------------------------------------------------------------------

    def ready(self) -> bool:
        up = self.upstream
        return (
            up is not None and up.connected and self.local.connected.is_set()
            and self.loaded.is_set()
        )

    def _set_up(self, side: str, up: bool) -> None:
        self.stats.up[side] = up
        if up:
            self._wake.set()

    # -- upstream ----------------------------------------------------------------------

    def _connect_options(self) -> ConnectOptions:
        f = self.settings.flespi
        return ConnectOptions(
            host=f.host,
            port=f.port,
            username=f.token.get_secret_value(),
            client_id=f.client_id,
            tls=tls_context(str(f.ca_file) if f.ca_file else None) if f.tls else None,
            keepalive=f.keepalive,
            session_expiry=f.session_expiry,
        )

    def subscriptions(self) -> list[str]:
        f = self.settings.flespi
        filters = flespi_topics.subscriptions(
            f.devices,
            list(self.catalog) if f.use_comma_lists else None,
            comma_lists=f.use_comma_lists,
            messages=f.messages,
        )
        return [*filters, self._reply_prefix + "#"]

    async def _upstream_loop(self) -> None:
        r = self.settings.reconnect
        backoff = Backoff(r.min_delay, r.max_delay)
        fresh = True  # this process has no state yet: it needs the retained replay
        attempts = 0
        while not self._stopping.is_set():
            up = self._upstream_factory(self._connect_options(), self._on_upstream)
            try:
                await up.connect()
                resend = fresh or not up.session_present
                await up.subscribe(self.subscriptions(), resend_retained=resend)
                self.upstream = up
                if attempts:
                    self.stats.reconnects["upstream"] += 1
                attempts += 1
                self._set_up("upstream", True)
                log.info("connected to flespi %s:%s (session %s)", self.settings.flespi.host,
                         self.settings.flespi.port,
                         "resumed" if up.session_present else "new")
                # Everything the broker queued before this marker reaches us first.
                up.publish(self._sync_topic, b"sync", qos=1)
                fresh = False
                backoff.reset()
                await up.wait_closed()
                if not self._stopping.is_set():
                    log.warning("connection to flespi lost")
            except UpstreamError as exc:
                log.warning("flespi: %s", exc)
            finally:
                self.upstream = None
                self._set_up("upstream", False)
                self._acks.clear()  # the broker redelivers whatever was not acked
                await up.disconnect()
            if self._stopping.is_set():
                break
            delay = backoff.next()
            log.info("reconnecting to flespi in %.1fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _on_upstream(self, topic: str, payload: bytes, ts: float | None,
                     ack: Ack | None) -> None:
        """Hot path: runs once per upstream message, synchronously."""
        if ack is not None:
            self._acks.append(ack)
        self._wake.set()
        parsed = flespi_topics.parse(topic)
        if parsed is None:
            if topic.startswith(self._reply_prefix):
                self._on_reply(topic, payload)
            else:
                self.stats.upstream_messages["ignored"] += 1
            return
        kind, device_id, name = parsed
        self.stats.upstream_messages[kind.value] += 1
        param = self.catalog.get(name) if kind is Kind.TELEMETRY else None
        if kind is Kind.TELEMETRY and param is None:
            return  # not in the catalogue: ignored, but still acknowledged
        if len(payload) > MAX_UPSTREAM_PAYLOAD:
            self._invalid("oversized", topic, f"{len(payload)} bytes")
            return
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            self._invalid("bad_json", topic, str(exc))
            return
        if param is not None:
            try:
                values = catalog.normalize(param, value)
            except catalog.ValueRejected as exc:
                self._invalid("bad_value", topic, str(exc))
                return
            if self.store.apply_values(device_id, values, ts):
                self._pending_since.setdefault(device_id, time.monotonic())
        elif kind is Kind.DEVICE:
            if not isinstance(value, dict):
                self._invalid("bad_value", topic, "device object is not a JSON object")
            else:
                self.store.apply_object(device_id, value)
        elif kind is Kind.PROPERTY:
            self._on_property(topic, device_id, name, value)

    def _on_property(self, topic: str, device_id: int, name: str, value: Any) -> None:
        if name == "connected":
            if isinstance(value, bool):
                self.store.apply_connected(device_id, value)
            else:
                self._invalid("bad_value", topic, "connected is not a boolean")
        elif name == "name":
            if isinstance(value, str):
                self.store.apply_name(device_id, value)
            else:
                self._invalid("bad_value", topic, "name is not a string")

    def _on_reply(self, topic: str, payload: bytes) -> None:
        if topic == self._sync_topic and not self.loaded.is_set():
            log.info("initial state loaded: %d devices", len(self.store.devices))
            self.loaded.set()

    def _invalid(self, reason: str, topic: str, detail: str) -> None:
        self.stats.invalid["upstream", reason] += 1
        self._bad.warning(f"upstream:{reason}", "ignored upstream message on %.200r: %s: %.200s",
                          topic, reason, detail)

    # -- local -------------------------------------------------------------------------

    async def _on_local_connect(self) -> None:
        if self.local.connects > 1:
            self.stats.reconnects["local"] += 1
        self._set_up("local", True)
        # A restarted broker may have lost every retained message: republish all.
        self.store.mark_all()
        self._wake.set()

    async def _on_local(self, topic: str, payload: bytes) -> None:
        """Local inputs (commands, Home Assistant status) are handled by later modules."""

    def _publications(self, dev: Device, flags: int) -> list[Publication]:
        pubs: list[Publication] = []
        t = self.topics
        if flags & INFO:
            pubs.append(Publication(t.info(dev.id), orjson.dumps(dev.info.as_dict(dev.id))))
        if flags & AVAILABILITY and dev.online is not None:
            pubs.append(Publication(t.availability(dev.id),
                                    b"online" if dev.online else b"offline"))
        if flags & STATE and (dev.values or dev.last_seen is not None):
            pubs.append(Publication(t.state(dev.id), orjson.dumps(dev.state())))
        return pubs

    async def _publisher(self) -> None:
        window = self.settings.local.coalesce_window
        while True:
            await self._wake.wait()
            self._wake.clear()
            if window > 0 and self.store.has_dirty:
                await asyncio.sleep(window)  # let the rest of the burst arrive
            await self.local.connected.wait()
            n_acks = len(self._acks)
            batch = [(dev, dev.dirty) for dev in self.store.take_dirty()]
            pubs: list[Publication] = []
            since: list[float] = []
            for dev, flags in batch:
                dev.dirty = 0
                pubs.extend(self._publications(dev, flags))
                started = self._pending_since.pop(dev.id, None)
                if started is not None:
                    since.append(started)
            try:
                await self.local.publish_many(pubs)
            except LocalUnavailableError as exc:
                log.debug("publish deferred: %s", exc)
                for dev, flags in batch:
                    dev.dirty |= flags
                    self.store.mark_again(dev)
                self._wake.set()
                continue
            done = time.monotonic()
            for started in since:
                self.metrics.latency.observe(done - started)
            for pub in pubs:
                self.stats.publications[pub.topic.rsplit("/", 1)[1]] += 1
            self._ack(n_acks)

    def _ack(self, count: int) -> None:
        up = self.upstream
        acks = self._acks
        count = min(count, len(acks))
        tokens = [acks.popleft() for _ in range(count)]
        if up is not None and tokens:
            up.ack(tokens)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        m = self.settings.metrics
        if m.enabled:
            self.health = HealthServer(self.metrics, self.ready, m.host, m.port)
            await self.health.start()
        self._tasks = [
            asyncio.create_task(self.local.run(), name="local"),
            asyncio.create_task(self._publisher(), name="publisher"),
            asyncio.create_task(self._upstream_loop(), name="upstream"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        """Graceful stop: publish `offline`, disconnect from both brokers."""
        self._stopping.set()
        await self.local.publish_offline()
        up = self.upstream
        if up is not None:
            await up.disconnect()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.health is not None:
            await self.health.stop()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()
