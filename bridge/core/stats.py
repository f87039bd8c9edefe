"""The bridge's own counters, bumped on the hot path: plain integers in `Stats` and a bucket
count in `LatencyHistogram` (no locks, no label look-ups). `bridge.http.metrics` turns them
into Prometheus samples at scrape time; nothing here knows about Prometheus but the
histogram's family.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from prometheus_client.core import HistogramMetricFamily

from bridge.core.shards import Shard
from bridge.normalize.rules import SKIP_REASONS

# Upstream receive -> local publish: about a millisecond without coalescing, the coalescing
# window (0.1 s by default) plus that with it, seconds when the local broker is slow.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                   0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
SIDES = ("upstream", "local")
# Label values known in advance are exported as 0 from the start, so that `rate()` and
# alerts see a series before the first event (https://prometheus.io/docs/practices/instrumentation/#avoid-missing-metrics).
PUBLICATION_KINDS = ("state", "info", "availability")
LOOKUPS = ("device_type", "protocol")
INVALID_REASONS = (("upstream", "oversized"), ("upstream", "bad_json"), ("upstream", "bad_value"),
                   ("upstream", "bad_topic"))


@dataclass
class Stats:
    """Counters bumped on the hot path (plain ints: no locks, no label lookups)."""

    # by flespi topic kind (the collector exports the kinds not seen yet as 0)
    upstream_messages: Counter[str] = field(default_factory=Counter)
    publications: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(PUBLICATION_KINDS, 0)))
    invalid: Counter[tuple[str, str]] = field(
        default_factory=lambda: Counter(dict.fromkeys(INVALID_REASONS, 0)))
    commands: Counter[str] = field(default_factory=Counter)
    reconnects: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(SIDES, 0)))
    dropped: Counter[str] = field(default_factory=Counter)
    # flespi parameters that make no entity, by reason (bridge.normalize.rules.SKIP_REASONS)
    skipped: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(SKIP_REASONS, 0)))
    # failed REST look-ups of flespi names, by what was looked up (bridge.flespi.device_types)
    lookup_failures: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(LOOKUPS, 0)))
    # the HTTP stream: answers by status code, messages of its batches by outcome
    stream_requests: Counter[str] = field(default_factory=Counter)
    stream_messages: Counter[str] = field(default_factory=Counter)
    # stream connections the bridge closed on purpose, by reason (bridge.http.guard.REASONS)
    stream_connections_closed: Counter[str] = field(default_factory=Counter)
    # open stream connections, TLS handshakes under way included (set by the stream endpoint)
    stream_connections_open: Callable[[], int] = field(default=lambda: 0)
    up: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(SIDES, False))
    queues: dict[str, Callable[[], int]] = field(default_factory=dict)
    # seconds from a change's arrival to the local broker's acknowledgement of its state
    latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram())
    # this replica's place in a split fleet, and the devices it publishes now (None: every
    # device of the store, a single bridge)
    shard: Shard = field(default_factory=Shard)
    shard_devices: Callable[[], int] | None = None


class LatencyHistogram:
    """A cumulative histogram for the hot path: `observe` is a bisect and two additions
    (no lock, no `_created` series)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(float(b) for b in bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # `le` is inclusive
        self.total += seconds

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative = list(accumulate(self.counts))
        # repr: the shortest text that reads back as the same float ("0.0005", "1.0")
        buckets = [(repr(b), float(n)) for b, n in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", float(cumulative[-1])))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)
