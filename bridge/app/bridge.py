"""Wiring: builds the parts, connects them, starts and stops them. No logic of its own.

    flespi MQTT --> UpstreamSession --> Ingest --> Store --> Publisher --> LocalBroker
    flespi HTTP stream --> StreamEndpoint --^        (AckLedger: what flespi may be told is done)
    LocalBroker --routes--> CommandHandler --> REST (over MQTT, or HTTPS) --> flespi
                        \\-> StatusListener --(HomeAssistantOnline)--> Republisher

The hot path (a flespi message into the store, the store onto the local broker) is direct
calls. The cold path goes through the event hub (`bridge.core.events`): each part subscribes
in its `start()` to what it reacts to (a local connect, Home Assistant's `online`, a device
deleted in flespi, a device type's name learned), so no part refers to one built after it.

Every part is a `bridge.core.lifecycle.Part`: the lists below start in order and stop in
reverse. Inside, the `Supervisor` runs the essential tasks (local, publisher, upstream) once
its parts started; if one ends, `failed` is set (`/healthz` answers 503) and `flespi-bridge
run` exits non-zero so a supervisor restarts the process. Optional parts (the HTTP REST
transport, Home Assistant's status listener, the HTTP stream, metrics) exist only when on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from bridge.app.supervisor import Supervisor
from bridge.commands.handler import CommandHandler
from bridge.config.settings import Settings
from bridge.core.events import EventHub
from bridge.core.ledger import AckLedger
from bridge.core.lifecycle import Parts, Shutdown
from bridge.core.shards import Fleet
from bridge.core.store import Store
from bridge.flespi.device_types import DeviceTypes
from bridge.flespi.ingest import Ingest
from bridge.flespi.rest import HttpRest, Rest
from bridge.flespi.retire import Retirement
from bridge.flespi.session import UpstreamFactory, UpstreamLink, UpstreamSession
from bridge.flespi.upstream import GmqttUpstream
from bridge.homeassistant.status import StatusListener
from bridge.http.health import HealthServer
from bridge.http.metrics import Metrics
from bridge.http.stream_endpoint import StreamEndpoint
from bridge.publish.cleanup import Cleanup
from bridge.publish.lease import Lease, gated
from bridge.publish.local_broker import LocalBroker
from bridge.publish.publisher import Publisher, Tuning
from bridge.publish.renderer import Renderer
from bridge.publish.republisher import Republisher

log = logging.getLogger(__name__)
T = TypeVar("T")


def present(*parts: T | None) -> list[T]:
    """The optional parts that were built."""
    return [p for p in parts if p is not None]


class Bridge:
    def __init__(self, settings: Settings, *,
                 upstream_factory: UpstreamFactory = GmqttUpstream) -> None:
        self.settings = settings
        params = settings.flespi.parameter_table()
        self.store = store = Store()
        attrs = params.attributes  # grows with rule-made attributes
        unknown = [n for n in settings.metrics.fleet_parameters if n not in attrs]
        if unknown:  # logged as `bridge.app.bridge`, as it always was
            later = (": exported once a device reports it (flespi.parameters = \"all\")"
                     if params.open else "")
            log.warning("metrics.fleet_parameters: no such attribute %s%s (known: %s)",
                        ", ".join(unknown), later, ", ".join(attrs))
        self.metrics = Metrics(store, settings.metrics.fleet_parameters, attrs,
                               settings.metrics.max_devices)
        stats = self.stats = self.metrics.stats
        stats.shard = settings.cluster.place
        self.ledger = ledger = AckLedger()
        # every device id of a split fleet: filled by the session, read by the local side
        self.fleet = Fleet()
        events = EventHub()
        shutdown = Shutdown(settings.shutdown.grace)
        self.failed = shutdown.failed
        link = UpstreamLink(settings.flespi, upstream_factory)
        http_rest = None
        if settings.commands.transport == "http":
            http_rest = HttpRest(settings.commands.http_url,
                                 settings.flespi.token.get_secret_value())
        rest: Rest = link.rest if http_rest is None else http_rest
        # flespi's names for the device info, looked up through the commands' REST client
        self.device_types = DeviceTypes(rest, stats, events)
        self.renderer = renderer = Renderer(settings, attrs, names=self.device_types.names,
                                            dropped=stats.dropped)
        # with a split fleet, which replica publishes which device (None: one bridge)
        self.lease = lease = None if settings.cluster.place.single else Lease(
            renderer, store, self.fleet, events, stats.invalid)
        self.local = local = LocalBroker(settings.local, settings.reconnect,
                                         state_topic=renderer.topics.bridge_state,
                                         stats=stats, events=events, lease=lease)
        self.publisher = publisher = Publisher(
            store, ledger, local, gated(renderer.render, lease), stats,
            Tuning(settings.local.coalesce_window, shutdown=shutdown,
                   admit=lease.admits if lease else None))
        stats.shard_devices = lease.count if lease else None
        self.ingest = Ingest(settings, params, store, stats, publisher.outbox, events)
        self.session = session = UpstreamSession(settings, self.ingest, ledger,
                                                 link=link, wake=publisher.wake,
                                                 fleet=self.fleet)
        self.cleanup = Cleanup(store, renderer, publisher.outbox, local, session.loaded, events)
        # shard 0 of a split fleet ends the flespi sessions of replicas a shrink retired
        self.retirement = (Retirement(session, events) if lease is not None
                           and settings.cluster.place.index == 0 else None)
        self.republisher = Republisher(store, renderer, publisher, events,
                                       settings=settings.homeassistant)
        self.commands = commands = CommandHandler(settings, rest, store, stats, local, publisher)
        status = None
        if settings.homeassistant.discovery:
            status = StatusListener(renderer.ha.status_topic, local, events)
        self.stream = None
        if settings.stream.enabled:
            self.stream = StreamEndpoint(settings, self.ingest, store, ledger, stats, publisher)
            stats.queues["stream_batches"] = lambda: ledger.waiting
        stats.queues.update({
            "upstream_acks": lambda: ledger.pending,
            "dirty_devices": lambda: store.dirty_count,
            "commands_in_flight": lambda: len(commands.tasks),
            "local_in_flight": lambda: publisher.in_flight,
        })
        m = settings.metrics
        self.health = (HealthServer(self.metrics, self.ready, m.host, m.port, alive=self.alive)
                       if m.enabled else None)
        # Started in order (the cleanup before the republisher: on a local connect it holds
        # discovery back before everything is marked). Stopped in reverse: commands drained,
        # the publisher flushed (acknowledging flespi), the stream closed, work left
        # reported, look-ups stopped (before the session they need), a split fleet's devices
        # released, `offline` said, flespi left, republishes and cleanup cancelled; then the
        # supervisor cancels its tasks, the HTTP REST client closes, metrics go last.
        running = Supervisor(
            Parts([*present(self.retirement), self.cleanup, self.republisher, session, local,
                   *present(lease),
                   self.device_types,
                   WorkLeft(publisher, commands), *present(self.stream), publisher, commands,
                   *present(status)]),
            {"local": local.run, "publisher": publisher.run, "upstream": session.run},
            shutdown, leftovers=commands.tasks)
        self.parts = Parts([*present(self.health), *present(http_rest), running])

    @property
    def loaded(self) -> asyncio.Event:
        """Set once the full upstream state has arrived (the start-up marker came back)."""
        return self.session.loaded

    def ready(self) -> bool:
        return (self.session.connected and self.local.connected.is_set()
                and self.loaded.is_set() and not self.failed.is_set()
                and (self.lease is None or self.lease.complete))

    def alive(self) -> bool:
        return not self.failed.is_set()

    async def start(self) -> None:
        """Listeners first (a port that cannot be bound is a `ListenError` before anything
        connects), then the essential tasks."""
        await self.parts.start()

    async def stop(self) -> None:
        """Graceful stop: take no new commands, finish in-flight commands and publications
        (within `shutdown.grace`), publish `offline`, disconnect from both brokers."""
        await self.parts.stop()


class WorkLeft:
    """A part whose stop reports what the grace window left undone (listed so that it stops
    after the publisher's flush and the stream endpoint)."""

    def __init__(self, publisher: Publisher, commands: CommandHandler) -> None:
        self.publisher = publisher
        self.commands = commands

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        if not self.publisher.idle() or self.commands.tasks:
            log.warning("stopping with work left: %d command(s), %d device state(s)",
                        len(self.commands.tasks), self.publisher.store.dirty_count)
