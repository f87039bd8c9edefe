"""Wiring: builds the parts, connects them, starts and stops them. No logic of its own.

    flespi --> UpstreamSession --> Ingest --> Store --> Publisher --> LocalBroker
    flespi HTTP stream --> StreamEndpoint --^
                 (AckLedger: what flespi may be told is done)     ^        |
                                          Republisher, Cleanup ---+        v
                 MqttRest/HttpRest <-- CommandTopics <-- command topics ---+

Every part that must run for the bridge to work is supervised (`bridge/tasks.py`): if one
ends, `failed` is set (and `/healthz` answers 503), and `flespi-bridge run` exits non-zero
so a supervisor restarts the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from bridge.app.supervisor import Supervisor
from bridge.commands.handler import CommandTopics
from bridge.config.settings import Settings
from bridge.core.ledger import AckLedger
from bridge.core.store import Store
from bridge.exceptions import ListenError
from bridge.flespi.device_types import DeviceTypes
from bridge.flespi.ingest import Ingest
from bridge.flespi.rest import HttpRest, Rest
from bridge.flespi.session import UpstreamFactory, UpstreamSession
from bridge.flespi.upstream import GmqttUpstream
from bridge.http.health import HealthServer
from bridge.http.metrics import Metrics
from bridge.http.stream_endpoint import StreamEndpoint
from bridge.publish.cleanup import Cleanup
from bridge.publish.local_broker import LocalBroker
from bridge.publish.publisher import Publisher
from bridge.publish.renderer import Renderer
from bridge.publish.republisher import Republisher

log = logging.getLogger(__name__)


class Bridge:
    def __init__(self, settings: Settings, *,
                 upstream_factory: UpstreamFactory = GmqttUpstream) -> None:
        self.settings = settings
        self.parameters = params = settings.flespi.parameter_table()
        attrs = params.attributes  # grows with rule-made attributes
        self.store = store = Store()
        unknown = [n for n in settings.metrics.fleet_parameters if n not in attrs]
        if unknown:
            later = (": exported once a device reports it (flespi.parameters = \"all\")"
                     if params.open else "")
            log.warning("metrics.fleet_parameters: no such attribute %s%s (known: %s)",
                        ", ".join(unknown), later, ", ".join(attrs))
        self.metrics = Metrics(store, settings.metrics.fleet_parameters, attrs,
                               settings.metrics.max_devices)
        stats = self.stats = self.metrics.stats
        self.ledger = AckLedger()
        self.renderer = renderer = Renderer(settings, attrs)
        self.local = LocalBroker(settings.local, settings.reconnect,
                                 state_topic=renderer.topics.bridge_state,
                                 on_message=self._on_local, on_connect=self._on_local_connect,
                                 on_disconnect=lambda: self._set_up("local", False))
        self.publisher = publisher = Publisher(
            store, self.ledger, self.local, renderer.render, stats, self.metrics.latency,
            coalesce_window=settings.local.coalesce_window)
        outbox = publisher.outbox
        self.session = session = UpstreamSession(
            settings, params.subscribed(), self.ledger, stats, factory=upstream_factory,
            wake=publisher.wake)
        self.cleanup = Cleanup(settings, store, renderer, outbox, self.local, session.loaded,
                               rediscover=lambda: self.republisher.discovery_only(),
                               announce_owed=lambda: self.republisher.discovery_owed())
        self.ingest = Ingest(params, store, stats, renderer.topics,
                             reply_prefix=session.reply_prefix, on_reply=session.on_reply,
                             on_removed=self.cleanup.device_removed, on_message=outbox.add_one,
                             settings=settings.commands.setting_properties())
        session.ingest = self.ingest.handle
        ha = settings.homeassistant
        self.republisher = Republisher(store, renderer, outbox, publisher.wake,
                                       discovery=ha.discovery, status_delay=ha.status_delay)
        self._http_rest: HttpRest | None = None
        rest: Rest = session.rest
        if settings.commands.transport == "http":
            rest = self._http_rest = HttpRest(settings.commands.http_url,
                                              settings.flespi.token.get_secret_value())
        self.commands = CommandTopics(settings, rest, store, stats, self.local, outbox,
                                      publisher.wake)
        # flespi's names for the device info, looked up through the same REST client
        self.device_types = DeviceTypes(rest, stats, on_learned=self.republisher.names_learned)
        renderer.names = self.device_types.names
        self.local.subscribe(self.commands.subscriptions
                             + ([self.republisher.status_topic] if ha.discovery else []))
        self.stream: StreamEndpoint | None = None
        if settings.stream.enabled:
            self.stream = StreamEndpoint(settings.stream, settings.flespi.devices, self.ingest,
                                         store, self.ledger, stats, wake=publisher.hurry,
                                         accepting=self._accepting)
            stats.queues["stream_batches"] = lambda: self.ledger.waiting
        stats.queues.update({
            "upstream_acks": lambda: self.ledger.pending,
            "dirty_devices": lambda: store.dirty_count,
            "commands_in_flight": lambda: len(self.commands.tasks),
            "local_in_flight": lambda: publisher.in_flight,
        })
        self.health: HealthServer | None = None
        self.tasks = Supervisor()
        self.failed = self.tasks.failed

    @property
    def loaded(self) -> asyncio.Event:
        """Set once the full upstream state has arrived (the start-up marker came back)."""
        return self.session.loaded

    def ready(self) -> bool:
        return (self.session.connected and self.local.connected.is_set()
                and self.loaded.is_set() and not self.failed.is_set())

    def _accepting(self) -> str | None:
        """Why a stream batch cannot be taken now (answered 503), or None."""
        if not self.local.connected.is_set():
            return "the local broker is not connected"
        if self.publisher.in_flight >= self.publisher.pipeline:
            return "the local broker is behind"
        if self.failed.is_set():
            return "the bridge is failing"
        return None

    def alive(self) -> bool:
        return not self.failed.is_set()

    def _set_up(self, side: str, up: bool) -> None:
        self.stats.up[side] = up

    async def _on_local_connect(self) -> None:
        if self.local.connects > 1:
            self.stats.reconnects["local"] += 1
        self._set_up("local", True)
        self.cleanup.on_local_connect()  # first: it holds discovery back until it knows
        self.republisher.everything()

    async def _on_local(self, topic: str, payload: bytes, retain: bool) -> None:
        if topic == self.republisher.status_topic:
            self.republisher.on_status(payload, retain)
        else:
            self.commands.handle(topic, payload, retain)

    async def start(self) -> None:
        m = self.settings.metrics
        if m.enabled:
            self.health = HealthServer(self.metrics, self.ready, m.host, m.port,
                                       alive=self.alive)
            await listen(self.health.start(), "metrics", m.host, m.port)
        if self.stream is not None:
            st = self.settings.stream
            await listen(self.stream.start(), "the stream endpoint", st.host, st.port)
        self.tasks.start(local=self.local.run(), publisher=self.publisher.run(),
                         upstream=self.session.run())

    async def stop(self) -> None:
        """Graceful stop: take no new commands, finish in-flight commands and publications
        (within `shutdown.grace`), publish `offline`, disconnect from both brokers."""
        self.tasks.stopping()
        grace = self.settings.shutdown.grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self.commands.drain(grace)
        # the publisher flushes what is dirty (and acknowledges it upstream)
        while (not self.publisher.idle() and self.local.connected.is_set()
               and loop.time() < deadline and not self.failed.is_set()):
            self.publisher.wake()
            await asyncio.sleep(0.02)
        if self.stream is not None:  # batches settled meanwhile are answered; flespi retries
            await self.stream.stop()  # the others
        if not self.publisher.idle() or self.commands.tasks:
            log.warning("stopping with work left: %d command(s), %d device state(s)",
                        len(self.commands.tasks), self.store.dirty_count)
        self.device_types.stop()  # before the session: its look-ups would fail and retry
        await self.local.publish_offline()
        await self.session.stop()
        self.republisher.stop()
        self.cleanup.stop()
        await self.tasks.stop(*self.commands.tasks)
        if self._http_rest is not None:
            await self._http_rest.close()
        if self.health is not None:
            await self.health.stop()


async def listen(starting: Coroutine[Any, Any, None], what: str, host: str, port: int) -> None:
    """Start a listener; a port that is taken or not ours to bind is a `ListenError`."""
    try:
        await starting
    except OSError as exc:
        raise ListenError(f"cannot serve {what} on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
