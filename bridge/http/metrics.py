"""Prometheus metrics (served by `bridge.http.health`).

The hot path only bumps plain integers in `bridge.core.stats`; a collector turns them, and
the fleet in the state store, into Prometheus samples at scrape time. Fleet series therefore
disappear by themselves when a device leaves the store, and a renamed device changes its
`device_name` label without leaving the old series behind.

Everything lives on a registry of its own per `Metrics`, so tests (and several bridges in one
process) stay apart. The metric names are a contract: see `docs/monitoring.md`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bridge import __version__
from bridge.core.stats import (
    SIDES,
    LatencyHistogram,
    Stats,
)
from bridge.core.store import Store
from bridge.flespi.topics import Kind
from bridge.normalize.catalog import Attribute

log = logging.getLogger(__name__)

PREFIX = "flespi_bridge_"
UPSTREAM_KINDS = (*(k.value for k in Kind), "ignored")

# catalogue unit -> (metric name suffix, factor to the Prometheus base unit)
UNITS: dict[str | None, tuple[str, float]] = {
    "%": ("percent", 1.0),
    "V": ("volts", 1.0),
    "A": ("amperes", 1.0),
    "km/h": ("meters_per_second", 1 / 3.6),
    "m": ("meters", 1.0),
    "km": ("meters", 1000.0),
    "°": ("degrees", 1.0),
    "°C": ("celsius", 1.0),
    "s": ("seconds", 1.0),
    "h": ("seconds", 3600.0),
    "L": ("liters", 1.0),
    "L/h": ("liters_per_second", 1 / 3600),
    "kg": ("grams", 1000.0),
    "rpm": ("rpm", 1.0),
    "dBm": ("dbm", 1.0),
    None: ("", 1.0),
}
FLEET_LABELS = ["device_id", "device_name"]
BATTERY = PREFIX + "device_battery_percent"
ONLINE = PREFIX + "device_online"
LAST_SEEN = PREFIX + "device_last_seen_timestamp_seconds"
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


def fleet_metric_name(attr: Attribute) -> str:
    suffix, _ = UNITS.get(attr.unit, ("", 1.0))
    base = _NOT_NAME.sub("_", attr.name)
    return f"{PREFIX}device_{base}" + (f"_{suffix}" if suffix else "")


def fleet_attributes(fleet: Iterable[Attribute]) -> list[tuple[str, Attribute]]:
    """(metric name, attribute) of the extra per-device gauges: numeric and boolean
    attributes only, each name once, never one of the fixed fleet gauges."""
    taken = {BATTERY, ONLINE, LAST_SEEN}
    out: list[tuple[str, Attribute]] = []
    for attr in fleet:
        if attr.name == "battery":
            continue  # always exported, as flespi_bridge_device_battery_percent
        name = fleet_metric_name(attr)
        if name in taken:
            log.warning("metrics.fleet_parameters: %s would export %s, which is exported "
                        "already; left out", attr.name, name)
            continue
        if attr.type == "str":
            log.warning("metrics.fleet_parameters: %s is not numeric; left out", attr.name)
            continue
        taken.add(name)
        out.append((name, attr))
    return out


class BridgeCollector(Collector):
    def __init__(self, stats: Stats, latency: LatencyHistogram, store: Store,
                 fleet: Sequence[str], attributes: Mapping[str, Attribute],
                 max_devices: int) -> None:
        self.stats = stats
        self.latency = latency
        self.store = store
        self.fleet_names = list(fleet)
        # live: rule-made attributes join it as devices report them
        self.attributes = attributes
        self._resolved: list[Attribute] = []
        self.fleet: list[tuple[str, Attribute]] = []
        self.max_devices = max_devices

    def _fleet_gauges(self) -> list[tuple[str, Attribute]]:
        """(metric name, attribute) of `metrics.fleet_parameters` that exist by now."""
        resolved = [self.attributes[n] for n in self.fleet_names if n in self.attributes]
        if resolved != self._resolved:
            self._resolved = resolved
            self.fleet = fleet_attributes(resolved)
        return self.fleet

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
        yield InfoMetricFamily(PREFIX + "build", "Build information.",
                               value={"version": __version__})
        yield self._counter("upstream_messages", "Messages received from flespi, by kind.",
                            ["kind"],
                            {**dict.fromkeys(UPSTREAM_KINDS, 0), **s.upstream_messages})
        yield self._counter("local_publications", "Publications to the local broker, by kind.",
                            ["kind"], s.publications)
        yield self._counter("invalid_inputs", "Rejected inputs, by source and reason.",
                            ["source", "reason"], s.invalid)
        yield self._counter("commands", "Commands handled, by outcome.", ["outcome"], s.commands)
        yield self._counter("reconnects", "Reconnections after a lost connection, by side.",
                            ["side"], {side: s.reconnects[side] for side in SIDES})
        yield self._counter("dropped", "Updates dropped (never silently), by reason.",
                            ["reason"], s.dropped)
        yield self._counter("skipped_parameters",
                            "flespi parameter values that make no entity, by reason.",
                            ["reason"], s.skipped)
        yield self._counter("lookup_failures",
                            "Failed REST look-ups of flespi device type and protocol names.",
                            ["what"], s.lookup_failures)
        yield self._counter("stream_requests", "flespi HTTP stream batches, by answer.",
                            ["code"], s.stream_requests)
        yield self._counter("stream_messages",
                            "Messages of flespi HTTP stream batches, by outcome.",
                            ["outcome"], s.stream_messages)
        yield self._counter("stream_connections_closed",
                            "flespi HTTP stream connections closed or refused by the bridge's "
                            "limits, by reason.", ["reason"], s.stream_connections_closed)
        yield GaugeMetricFamily(PREFIX + "stream_connections_open",
                                "flespi HTTP stream connections open (TLS handshakes included).",
                                value=s.stream_connections_open())
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
        yield self.latency.family(
            PREFIX + "processing_latency_seconds",
            "Time from receiving a flespi update to its local publication.")
        devices = self.store.devices
        yield GaugeMetricFamily(PREFIX + "devices", "Devices tracked.", value=len(devices))
        shard = str(s.shard.index)
        info = GaugeMetricFamily(PREFIX + "shard_info", "This replica's shard of a split "
                                 "fleet, always 1 (shard 0 of 1: a single bridge).",
                                 labels=["shard", "shards"])
        info.add_metric([shard, str(s.shard.count)], 1.0)
        yield info
        owned = GaugeMetricFamily(PREFIX + "shard_devices", "Devices this replica publishes "
                                  "now.", labels=["shard"])
        owned.add_metric([shard], s.shard_devices() if s.shard_devices else len(devices))
        yield owned
        yield GaugeMetricFamily(
            PREFIX + "devices_online",
            "Tracked devices that flespi reports connected (all of them, whatever the cap).",
            value=sum(1 for dev in devices.values() if dev.online))

    def _fleet(self) -> Iterator[Metric]:
        battery = GaugeMetricFamily(BATTERY, "Battery level of the device.",
                                    labels=FLEET_LABELS)
        online = GaugeMetricFamily(ONLINE, "1 while flespi says the device is connected.",
                                   labels=FLEET_LABELS)
        seen = GaugeMetricFamily(LAST_SEEN, "Time of the device's newest value.",
                                 labels=FLEET_LABELS)
        extra = [(attr, UNITS.get(attr.unit, ("", 1.0))[1],
                  GaugeMetricFamily(name, f"{attr.label} of the device.", labels=FLEET_LABELS))
                 for name, attr in self._fleet_gauges()]
        devices = self.store.devices
        ids = sorted(devices)
        for device_id in ids[: self.max_devices]:
            dev = devices[device_id]
            key = [str(device_id), dev.name]
            values = dev.values
            level = values.get("battery")
            if isinstance(level, int | float) and not isinstance(level, bool):
                battery.add_metric(key, float(level))
            if dev.online is not None:
                online.add_metric(key, 1.0 if dev.online else 0.0)
            if dev.last_seen is not None:
                seen.add_metric(key, dev.last_seen)
            for attr, factor, family in extra:
                value = values.get(attr.name)
                if isinstance(value, bool):
                    family.add_metric(key, 1.0 if value else 0.0)
                elif isinstance(value, int | float):
                    family.add_metric(key, value * factor)
        yield battery
        yield online
        yield seen
        for _, _, family in extra:
            yield family
        yield GaugeMetricFamily(
            PREFIX + "fleet_devices_not_exported",
            "Devices beyond metrics.max_devices, left out of the per-device series.",
            value=max(0, len(ids) - self.max_devices),
        )


class Metrics:
    """One registry per bridge, so tests (and several bridges in one process) stay apart."""

    def __init__(self, store: Store, fleet: Sequence[str], attributes: Mapping[str, Attribute],
                 max_devices: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats = Stats()
        self.latency = self.stats.latency
        self.registry.register(BridgeCollector(self.stats, self.latency, store, fleet,
                                               attributes, max_devices))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition the scraper asked for (`Accept`): OpenMetrics or Prometheus text."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
