"""Prometheus metrics and the health endpoints, on one HTTP port.

The hot path only bumps plain integers in `Stats`; a collector turns them, and the fleet in
the state store, into Prometheus samples at scrape time. Fleet series therefore disappear
by themselves when a device leaves the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from bridge import __version__
from bridge.catalog import Attribute
from bridge.state import Store

log = logging.getLogger(__name__)

PREFIX = "flespi_bridge_"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIDES = ("upstream", "local")

# catalogue unit -> (metric name suffix, factor to the Prometheus base unit)
UNITS: dict[str | None, tuple[str, float]] = {
    "%": ("percent", 1.0),
    "V": ("volts", 1.0),
    "km/h": ("meters_per_second", 1 / 3.6),
    "m": ("meters", 1.0),
    "°": ("degrees", 1.0),
    None: ("", 1.0),
}


@dataclass
class Stats:
    """Counters bumped on the hot path (plain ints: no locks, no label lookups)."""

    upstream_messages: Counter[str] = field(default_factory=Counter)
    publications: Counter[str] = field(default_factory=Counter)
    invalid: Counter[tuple[str, str]] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    reconnects: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    up: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(SIDES, False))
    queues: dict[str, Callable[[], int]] = field(default_factory=dict)


def fleet_metric_name(attr: Attribute) -> str:
    suffix, _ = UNITS.get(attr.unit, ("", 1.0))
    return f"{PREFIX}device_{attr.name}" + (f"_{suffix}" if suffix else "")


class BridgeCollector(Collector):
    def __init__(self, stats: Stats, store: Store, fleet: Iterable[Attribute],
                 max_devices: int) -> None:
        self.stats = stats
        self.store = store
        self.fleet = [a for a in fleet if a.name != "battery"]
        self.max_devices = max_devices

    def collect(self) -> Iterator[Metric]:
        yield from self._bridge()
        yield from self._fleet()

    def _counter(self, name: str, doc: str, labels: list[str],
                 values: dict[Any, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
        for key, value in sorted(values.items()):
            family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
        return family

    def _bridge(self) -> Iterator[Metric]:
        s = self.stats
        yield self._counter("upstream_messages", "Messages received from flespi, by kind.",
                            ["kind"], s.upstream_messages)
        yield self._counter("local_publications", "Publications to the local broker, by kind.",
                            ["kind"], s.publications)
        yield self._counter("invalid_inputs", "Rejected inputs, by source and reason.",
                            ["source", "reason"], s.invalid)
        yield self._counter("commands", "Commands handled, by outcome.", ["outcome"], s.commands)
        yield self._counter("reconnects", "Reconnections, by side.", ["side"],
                            {side: s.reconnects[side] for side in SIDES})
        yield self._counter("dropped", "Updates dropped (never silently), by reason.",
                            ["reason"], s.dropped)
        up = GaugeMetricFamily(PREFIX + "connection_up", "1 while the broker is connected.",
                               labels=["side"])
        for side in SIDES:
            up.add_metric([side], 1.0 if s.up[side] else 0.0)
        yield up
        queue = GaugeMetricFamily(PREFIX + "queue_depth", "Work waiting, by queue.",
                                  labels=["queue"])
        for name, depth in sorted(s.queues.items()):
            queue.add_metric([name], depth())
        yield queue
        yield GaugeMetricFamily(PREFIX + "devices", "Devices tracked.",
                                value=len(self.store.devices))

    def _fleet(self) -> Iterator[Metric]:
        labels = ["device_id", "device_name"]
        battery = GaugeMetricFamily(PREFIX + "device_battery_percent",
                                    "Battery level of the device.", labels=labels)
        online = GaugeMetricFamily(PREFIX + "device_online",
                                   "1 while flespi says the device is connected.", labels=labels)
        seen = GaugeMetricFamily(PREFIX + "device_last_seen_timestamp_seconds",
                                 "Time of the device's newest value.", labels=labels)
        extra = [(a, GaugeMetricFamily(fleet_metric_name(a), f"{a.label} of the device.",
                                       labels=labels)) for a in self.fleet]
        devices = sorted(self.store.devices)
        for device_id in devices[: self.max_devices]:
            dev = self.store.devices[device_id]
            key = [str(device_id), dev.name]
            values = dev.values
            if isinstance(values.get("battery"), int | float):
                battery.add_metric(key, float(values["battery"]))
            if dev.online is not None:
                online.add_metric(key, 1.0 if dev.online else 0.0)
            if dev.last_seen is not None:
                seen.add_metric(key, dev.last_seen)
            for attr, family in extra:
                value = values.get(attr.name)
                if isinstance(value, bool):
                    family.add_metric(key, 1.0 if value else 0.0)
                elif isinstance(value, int | float):
                    family.add_metric(key, value * UNITS.get(attr.unit, ("", 1.0))[1])
        yield battery
        yield online
        yield seen
        for _, family in extra:
            yield family
        yield GaugeMetricFamily(
            PREFIX + "fleet_devices_not_exported",
            "Devices beyond metrics.max_devices, left out of the per-device series.",
            value=max(0, len(devices) - self.max_devices),
        )


class Metrics:
    """One registry per bridge, so tests (and several bridges in one process) stay apart."""

    def __init__(self, store: Store, fleet: Iterable[Attribute], max_devices: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats = Stats()
        self.registry.register(BridgeCollector(self.stats, store, fleet, max_devices))
        Info(PREFIX.rstrip("_") + "_build", "Build information.",
             registry=self.registry).info({"version": __version__})
        self.latency = Histogram(
            PREFIX + "processing_latency_seconds",
            "Time from receiving a flespi update to its local publication.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """GET /metrics, /healthz (process alive) and /readyz (ready() is true)."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], host: str, port: int):
        self.metrics = metrics
        self.ready = ready
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("metrics on http://%s:%s/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            status, ctype, body = self._respond(method, path)
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _respond(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"method not allowed\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, self.metrics.render()
        if path == "/healthz":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            if self.ready():
                return "200 OK", text, b"ready\n"
            return "503 Service Unavailable", text, b"not ready\n"
        return "404 Not Found", text, b"not found\n"

