"""Wiring: the upstream and local connection loops, the publisher, start-up and shutdown.

Data path: upstream message -> `_on_upstream` (parse, normalize, merge into the store,
remember the ack) -> `_publisher` (coalesce dirty devices, publish to the local broker,
then acknowledge upstream everything that publish covered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import orjson

from bridge import catalog
from bridge.backoff import Backoff
from bridge.commands import INVALID_INPUT, CommandError, CommandGateway, peek_transaction
from bridge.commands import result as command_result
from bridge.config import Settings
from bridge.flespi import topics as flespi_topics
from bridge.flespi.rest import HttpRest, MqttRest, Rest
from bridge.flespi.topics import Kind
from bridge.flespi.upstream import (
    Ack,
    ConnectOptions,
    GmqttUpstream,
    MessageHandler,
    Upstream,
    UpstreamError,
    UserProperties,
    timestamp,
    tls_context,
)
from bridge.homeassistant import (
    Context,
    Discovery,
    bridge_configs,
    device_configs,
)
from bridge.homeassistant import tracker_position as ha_tracker_position
from bridge.local import LocalBroker, LocalUnavailableError, Publication
from bridge.logs import RateLimitedLog
from bridge.metrics import HealthServer, Metrics
from bridge.state import AVAILABILITY, DISCOVERY, INFO, STATE, Device, Store
from bridge.topics import LocalTopics

log = logging.getLogger(__name__)

UpstreamFactory = Callable[[ConnectOptions, MessageHandler], Upstream]
_UNSENT = object()
# Upstream payloads larger than this are rejected unparsed (flespi values are small).
MAX_UPSTREAM_PAYLOAD = 256 * 1024
# A topic in these trees that does not parse (a device id that is not one) is invalid input.
DEVICE_TREES = (flespi_topics.STATE_PREFIX, flespi_topics.MESSAGE_PREFIX)
# Publications (full messages, command results) waiting for the local broker at most; full
# messages are bounded by flespi.max_inflight anyway, this caps the results.
MAX_OUTBOX = 20_000
# Seconds to wait for the start-up marker before taking the retained state as loaded.
LOAD_TIMEOUT = 60.0
# Devices whose publications are built and handed to the local broker together.
DEVICE_SLICE = 250
# Publications in flight to the local broker at most; beyond, the publisher waits (and
# updates coalesce per device in the store meanwhile).
LOCAL_PIPELINE = 5_000


class Bridge:
    def __init__(
        self,
        settings: Settings,
        *,
        upstream_factory: UpstreamFactory = GmqttUpstream,
    ) -> None:
        self.settings = settings
        self.catalog = catalog.build(settings.flespi.extra_parameters)
        attrs = self.attributes = catalog.attributes(self.catalog)
        self.store = Store()
        self.topics = LocalTopics(settings.local.base_topic)
        unknown = [n for n in settings.metrics.fleet_parameters if n not in attrs]
        if unknown:
            log.warning("metrics.fleet_parameters: no such attribute %s (known: %s)",
                        ", ".join(unknown), ", ".join(attrs))
        self.metrics = Metrics(
            self.store,
            [attrs[name] for name in settings.metrics.fleet_parameters if name in attrs],
            settings.metrics.max_devices,
        )
        self.stats = self.metrics.stats
        self._upstream_factory = upstream_factory
        self.upstream: Upstream | None = None
        # The bridge's own topics upstream: fixed per client id, since the persistent session
        # keeps the subscription; each run's start-up marker and each request are unique.
        self._reply_prefix = f"flespi-bridge/{settings.flespi.client_id}/"
        self._sync_topic = f"{self._reply_prefix}sync/{uuid.uuid4().hex}"
        self._acks: deque[Ack] = deque()
        self._ack_epoch = 0  # bumped when `_acks` is voided (connection lost)
        self._assigned = 0  # acks at the head of `_acks` that in-flight batches will release
        self._inflight: deque[_InFlight] = deque()
        self._inflight_size = 0  # publications in `_inflight`
        self._wake = asyncio.Event()
        self._pending_since: dict[int, float] = {}
        self.loaded = asyncio.Event()  # the initial retained state has arrived
        loc = settings.local
        self.ha = Context(loc.discovery_prefix, loc.base_topic, loc.output,
                          settings.homeassistant.expire_after)
        self.discovery = Discovery(self.ha)
        self._messages: list[Publication] = []  # full flespi messages to republish
        self._removed: list[Device] = []  # devices deleted upstream, to clear locally
        # Retained topics found on the local broker at connect, to clear what is stale.
        self._inventory: set[str] = set()
        self._inventory_done = asyncio.Event()
        self._status_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._bridge_configs_due = False
        self._mqtt_rest = MqttRest(lambda: self.upstream, self._reply_prefix)
        self._http_rest: HttpRest | None = None
        rest: Rest = self._mqtt_rest
        if settings.commands.transport == "http":
            rest = self._http_rest = HttpRest(settings.commands.http_url,
                                              settings.flespi.token.get_secret_value())
        self.commands = CommandGateway(
            settings.commands, rest,
            device=self._commandable,
            publish_result=self._publish_result,
            count=self._count_command,
        )
        self._commands: set[asyncio.Task[Any]] = set()
        local_subscriptions = [self.topics.device_filter("set"), self.topics.device_filter("+/set")]
        if settings.homeassistant.discovery:
            local_subscriptions.append(self.ha.status_topic)
        self.local = LocalBroker(
            settings.local,
            settings.reconnect,
            state_topic=self.topics.bridge_state,
            subscriptions=local_subscriptions,
            on_message=self._on_local,
            on_connect=self._on_local_connect,
            on_disconnect=lambda: self._set_up("local", False),
        )
        self._bad = RateLimitedLog(log)
        self.stats.queues.update({
            "upstream_acks": lambda: len(self._acks),
            "dirty_devices": lambda: self.store.dirty_count,
            "commands_in_flight": lambda: len(self._commands),
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
            receive_maximum=f.max_inflight,
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
                if not self.loaded.is_set():
                    asyncio.get_running_loop().call_later(LOAD_TIMEOUT, self._load_timeout)
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
                self._mqtt_rest.connection_lost()
                self._acks.clear()  # the broker redelivers whatever was not acked
                self._ack_epoch += 1
                self._assigned = 0
                await up.disconnect()
            if self._stopping.is_set():
                break
            delay = backoff.next()
            log.info("reconnecting to flespi in %.1fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _on_upstream(self, topic: str, payload: bytes, props: UserProperties,
                     ack: Ack | None) -> None:
        """Hot path: runs once per upstream message, synchronously."""
        if ack is not None:
            self._acks.append(ack)
        self._wake.set()
        parsed = flespi_topics.parse(topic)
        if parsed is None:
            if topic.startswith(self._reply_prefix):
                self._on_reply(topic, payload, props)
            else:
                self.stats.upstream_messages["ignored"] += 1
                if topic.startswith(DEVICE_TREES):
                    self._invalid("bad_topic", topic, "not a device topic (bad id or level)")
            return
        kind, device_id, name = parsed
        self.stats.upstream_messages[kind.value] += 1
        param = self.catalog.get(name) if kind is Kind.TELEMETRY else None
        if kind is Kind.TELEMETRY and param is None:
            return  # not in the catalogue: ignored, but still acknowledged
        if not payload:
            if kind is Kind.DEVICE:  # flespi clears a deleted device's retained object
                self._remove_device(device_id)
            return
        if len(payload) > MAX_UPSTREAM_PAYLOAD:
            self._invalid("oversized", topic, f"{len(payload)} bytes")
            return
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            self._invalid("bad_json", topic, str(exc))
            return
        if param is not None:
            # only object values (position) can be partly rejected: no list for the rest
            rejected: list[str] | None = [] if param.fields else None
            try:
                values = catalog.normalize(param, value, rejected)
            except catalog.ValueRejected as exc:
                self._invalid("bad_value", topic, str(exc))
                return
            if rejected:  # fields of an object value that did not fit; the rest is kept
                self._invalid("bad_value", topic, "; ".join(rejected))
            if self.store.apply_values(device_id, values, timestamp(props)):
                self._pending_since.setdefault(device_id, time.monotonic())
        elif kind is Kind.DEVICE:
            if not isinstance(value, dict):
                self._invalid("bad_value", topic, "device object is not a JSON object")
            else:
                self.store.apply_object(device_id, value)
        elif kind is Kind.PROPERTY:
            self._on_property(topic, device_id, name, value)
        elif kind is Kind.MESSAGE:
            if isinstance(value, dict):
                self._enqueue(Publication(self.topics.device(device_id, "message"), payload,
                                          False))
            else:
                self._invalid("bad_value", topic, "message is not a JSON object")

    def _remove_device(self, device_id: int) -> None:
        dev = self.store.remove(device_id)
        self._pending_since.pop(device_id, None)
        if dev is not None:
            log.info("device %s (%s) was deleted in flespi", device_id, dev.name)
            self._removed.append(dev)

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

    def _on_reply(self, topic: str, payload: bytes, props: UserProperties) -> None:
        if topic == self._sync_topic:
            if not self.loaded.is_set():
                log.info("initial state loaded: %d devices", len(self.store.devices))
                self.loaded.set()
                self._wake.set()
        else:
            self._mqtt_rest.on_reply(topic, payload, props)

    def _load_timeout(self) -> None:
        if not self.loaded.is_set() and self.upstream is not None:
            log.warning("the start-up marker on %s did not come back in %ss (may the token "
                        "publish and subscribe there?); taking the initial state as loaded",
                        self._reply_prefix + "#", LOAD_TIMEOUT)
            self.loaded.set()
            self._wake.set()

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
        self._republish_all()
        # Take stock of retained topics left by earlier runs; stale ones are cleared once
        # the upstream state is loaded (`_cleanup`).
        self._inventory.clear()
        self._inventory_done.clear()
        self._spawn(self._take_inventory())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._task_done)

    async def _take_inventory(self) -> None:
        try:
            self._inventory = await self.local.retained(self._inventory_filters())
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not list retained topics on the local broker: %s", exc)
            return
        self._inventory_done.set()
        self._wake.set()

    def _inventory_filters(self) -> list[str]:
        filters = [f"{self.topics.base}/+/+"]
        if self.settings.homeassistant.discovery:
            filters.append(self.ha.config_filter)
        return filters

    async def _on_local(self, topic: str, payload: bytes, retain: bool) -> None:
        if topic == self.ha.status_topic:
            if payload.strip().lower() == b"online":
                self._schedule_republish()
            return
        parsed = self.topics.parse_device(topic)
        if parsed is None:
            return
        device_id, rest = parsed
        entity: str | None = None
        if rest != "set":
            entity = rest.removesuffix("/set")
        if self._stopping.is_set():  # a stopping bridge takes no new commands, but answers
            refused = CommandError("shutting_down", "the bridge is shutting down; not sent")
            tx = peek_transaction(payload) if entity is None else None
            await self._publish_result(device_id, command_result(tx, entity, error=refused))
            self._count_command("shutting_down")
            return
        task = asyncio.create_task(self.commands.handle(device_id, entity, payload))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        task.add_done_callback(self._task_done)

    def _commandable(self, device_id: int) -> Device | None:
        """Commands go only to selected devices the bridge has heard of from flespi."""
        devices = self.settings.flespi.devices
        if devices != "all" and device_id not in devices:
            return None
        return self.store.devices.get(device_id)

    def _count_command(self, outcome: str) -> None:
        self.stats.commands[outcome] += 1
        if outcome in INVALID_INPUT:
            self.stats.invalid["command", outcome] += 1

    async def _publish_result(self, device_id: int, outcome: dict[str, Any]) -> None:
        pub = Publication(self.topics.device(device_id, "result"), orjson.dumps(outcome),
                          False)
        try:
            await self.local.publish(pub.topic, pub.payload, retain=False)
            self.stats.publications["result"] += 1
        except LocalUnavailableError:
            self._enqueue(pub)  # published once the local broker is back

    def _enqueue(self, pub: Publication) -> None:
        if len(self._messages) >= MAX_OUTBOX:
            dropped = self._messages.pop(0)
            self.stats.dropped["outbox_full"] += 1
            self._bad.warning("outbox", "local broker away too long: dropped %s", dropped.topic)
        self._messages.append(pub)
        self._wake.set()

    def _republish_all(self) -> None:
        self.discovery.reset()
        self.store.mark_all()
        self._bridge_configs_due = self.settings.homeassistant.discovery
        self._wake.set()

    def _schedule_republish(self) -> None:
        """Home Assistant restarted: republish discovery and states after a random delay
        (many bridges answering at once would flood it)."""
        if self._status_task is not None and not self._status_task.done():
            return
        max_delay = self.settings.homeassistant.status_delay

        async def later() -> None:
            await asyncio.sleep(random.uniform(max_delay / 2, max_delay))
            log.info("Home Assistant is online: republishing discovery and states")
            self._republish_all()

        self._status_task = asyncio.create_task(later())

    def _publications(self, dev: Device, flags: int) -> list[Publication]:
        pubs: list[Publication] = []
        t = self.topics
        if flags & DISCOVERY and self.settings.homeassistant.announces(dev.id) and (
                dev.values or dev.online is not None):
            pubs.extend(self.discovery.update(dev, self._device_configs(dev)))
        if flags & INFO:
            pubs.append(Publication(t.info(dev.id), orjson.dumps(dev.info.as_dict(dev.id))))
        if flags & AVAILABILITY and dev.online is not None:
            pubs.append(Publication(t.availability(dev.id),
                                    b"online" if dev.online else b"offline"))
        if flags & STATE and (dev.values or dev.last_seen is not None):
            output = self.settings.local.output
            if output != "attribute":
                pubs.append(Publication(t.state(dev.id), orjson.dumps(dev.state())))
            if output != "json":
                pubs.extend(self._attribute_publications(dev))
        return pubs

    def _device_configs(self, dev: Device) -> dict[str, dict[str, Any]]:
        profile = self.settings.commands.profile(dev.info.device_type_id)
        return device_configs(self.ha, dev, self.attributes, profile)

    def _attribute_publications(self, dev: Device) -> list[Publication]:
        """Per-attribute topics, only for values that changed since last published."""
        pubs = []
        for name, value in dev.state().items():
            if dev.sent.get(name, _UNSENT) != value:
                dev.sent[name] = value
                data = value.encode() if isinstance(value, str) else orjson.dumps(value)
                pubs.append(Publication(self.topics.device(dev.id, name), data))
        if "latitude" in dev.values and "position" not in dev.values:
            pos = orjson.dumps(ha_tracker_position(dev))
            if dev.sent.get("position") != pos:
                dev.sent["position"] = pos
                pubs.append(Publication(self.topics.device(dev.id, "position"), pos))
        return pubs

    def _clear_device(self, dev: Device) -> list[Publication]:
        leaves = ["state", "availability", "info", *dev.values, "last_seen", "position"]
        pubs = [Publication(self.topics.device(dev.id, leaf), b"") for leaf in leaves]
        return pubs + self.discovery.forget(dev.id)

    def _cleanup(self) -> list[Publication]:
        """Retained topics from earlier runs that nothing live stands behind."""
        live = set(bridge_configs(self.ha)) if self.settings.homeassistant.discovery else set()
        for dev in self.store.devices.values():
            if self.settings.homeassistant.announces(dev.id):
                live.update(self._device_configs(dev))
        stale = []
        for topic in self._inventory:
            parsed = self.topics.parse_device(topic)
            if parsed is not None:
                if parsed[0] not in self.store.devices:
                    stale.append(topic)  # a device that is gone or no longer selected
            elif topic.startswith(self.ha.prefix + "/") and topic not in live:
                stale.append(topic)  # an entity no longer generated
        self._inventory.clear()
        if stale:
            log.info("clearing %d stale retained topics from an earlier run", len(stale))
        return [Publication(topic, b"") for topic in sorted(stale)]

    async def _publisher(self) -> None:
        window = self.settings.local.coalesce_window
        while True:
            await self._wake.wait()
            self._wake.clear()
            if window > 0 and self.store.has_dirty:
                await asyncio.sleep(window)  # let the rest of the burst arrive
            await self.local.connected.wait()
            await self._pipeline_room()
            try:
                await self._flush()
            except Exception:  # a bug must not stop every later publication
                log.exception("publishing failed")
                self.stats.dropped["internal_error"] += 1

    async def _flush(self) -> None:
        """Hand everything pending to the local broker, without waiting for it: the batches
        form a pipeline (`_inflight`) whose acknowledgements release the upstream acks in
        order. Waiting for each batch before the next would stall on every broker that
        delays its acknowledgements (Nagle's algorithm: 40 ms a batch on stock Mosquitto).
        Dirty devices go out in slices, so a burst never holds all its publications at once;
        a full pipeline makes the publisher wait, and devices coalesce meanwhile."""
        acks, epoch = len(self._acks) - self._assigned, self._ack_epoch
        self._assigned += acks
        head: list[Publication] = []
        bridge_due, self._bridge_configs_due = self._bridge_configs_due, False
        if bridge_due:
            head.extend(Publication(t, orjson.dumps(c))
                        for t, c in bridge_configs(self.ha).items())
        removed, self._removed = self._removed, []
        for dev in removed:
            head.extend(self._clear_device(dev))
        messages, self._messages = self._messages, []
        head.extend(messages)
        if self._inventory and self._inventory_done.is_set() and self.loaded.is_set():
            head.extend(self._cleanup())
        dirty = self.store.take_dirty()
        start = 0
        while True:
            batch = [(dev, dev.dirty) for dev in dirty[start:start + DEVICE_SLICE]]
            last = start + DEVICE_SLICE >= len(dirty)
            pubs, since = head, []
            for dev, flags in batch:
                dev.dirty = 0
                pubs.extend(self._publications(dev, flags))
                started = self._pending_since.pop(dev.id, None)
                if started is not None:
                    since.append(started)
            flight = _InFlight(len(pubs), acks if last else 0, epoch, since, messages, removed,
                               bridge_due)
            try:
                flight.future = self.local.publish_nowait(pubs)
            except LocalUnavailableError as exc:
                log.debug("publish deferred: %s", exc)
                for dev, flags in batch:
                    dev.dirty |= flags
                for dev in dirty[start:]:
                    self.store.mark_again(dev)
                self._assigned -= acks
                self._requeue(flight)
                self._wake.set()
                return
            for pub in pubs:
                self.stats.publications[_kind(pub.topic)] += 1
            self._inflight.append(flight)
            self._inflight_size += flight.size
            flight.future.add_done_callback(self._completed)
            if last:
                return
            head, messages, removed, bridge_due = [], [], [], False
            start += DEVICE_SLICE
            await self._pipeline_room()

    async def _pipeline_room(self) -> None:
        while self._inflight and self._inflight_size >= LOCAL_PIPELINE:
            await asyncio.wait({self._inflight[0].future})

    def _completed(self, _: object = None) -> None:
        """Batches complete in order (the broker acknowledges in order); release each one's
        upstream acks, or requeue what a lost connection took with it."""
        while self._inflight and self._inflight[0].future.done():
            flight = self._inflight.popleft()
            self._inflight_size -= flight.size
            ok = flight.future.exception() is None
            if flight.epoch == self._ack_epoch:
                self._assigned -= flight.acks
                if ok:
                    self._ack(flight.acks)
            if ok:
                done = time.monotonic()
                for started in flight.since:
                    self.metrics.latency.observe(done - started)
            else:  # the states come back with the reconnect's full republish
                self._requeue(flight)

    def _requeue(self, flight: _InFlight) -> None:
        self._messages[:0] = flight.messages
        self._removed[:0] = flight.removed
        self._bridge_configs_due |= flight.bridge_due

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
        """Graceful stop: take no new commands, finish in-flight commands and publications
        (within `shutdown.grace`), publish `offline`, disconnect from both brokers."""
        self._stopping.set()
        await self._drain(self.settings.shutdown.grace)
        await self.local.publish_offline()
        up = self.upstream
        if up is not None:
            await up.disconnect()
        await cancel_and_wait([*self._tasks, *self._background,
                               *([self._status_task] if self._status_task else [])])
        if self._http_rest is not None:
            await self._http_rest.close()
        if self.health is not None:
            await self.health.stop()

    def _idle(self) -> bool:
        return not (self._commands or self.store.has_dirty or self._messages or self._removed
                    or self._inflight)

    async def _drain(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._commands:
            log.info("waiting for %d command(s) in flight", len(self._commands))
            await asyncio.wait(set(self._commands), timeout=grace)
        # the publisher flushes what is dirty (and acknowledges it upstream)
        while not self._idle() and self.local.connected.is_set() and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)
        if not self._idle():
            log.warning("stopping with work left: %d command(s), %d device state(s)",
                        len(self._commands), self.store.dirty_count)


@dataclass(slots=True)
class _InFlight:
    """One batch handed to the local broker and not yet acknowledged by it."""

    size: int
    acks: int  # upstream acks released when it completes
    epoch: int
    since: list[float]  # when its updates arrived (latency histogram)
    messages: list[Publication]  # requeued if the connection is lost
    removed: list[Device]
    bridge_due: bool
    future: asyncio.Future[None] = field(init=False)


def _kind(topic: str) -> str:
    """Metric label of a local publication: the last topic level, `config` for discovery."""
    leaf = topic.rsplit("/", 1)[-1]
    known = ("state", "availability", "info", "message", "config", "result")
    return leaf if leaf in known else "attribute"


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], timeout: float = 10.0) -> None:
    """Cancel tasks and wait for them, cancelling again when a cancellation was swallowed
    (Python 3.11's `asyncio.wait_for`, used inside aiomqtt, can lose one)."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    if pending:
        log.warning("tasks still running at shutdown: %s", [t.get_name() for t in pending])
