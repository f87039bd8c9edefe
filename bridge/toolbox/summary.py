"""The trip summary table (`track --summary`), and a sink that fans points out. Pure."""

from __future__ import annotations

from bridge.toolbox.points import Point
from bridge.toolbox.timeparse import duration, iso
from bridge.toolbox.trips import TripSink, TripSummary

HEADER = ("trip", "start", "end", "duration", "distance_km", "max_kmh", "avg_kmh")


def rows(summaries: list[TripSummary]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [HEADER]
    for s in summaries:
        out.append((str(s.index), iso(s.start), iso(s.end), duration(s.duration),
                    f"{s.distance / 1000:.3f}", f"{s.max_speed:.1f}", f"{s.avg_speed:.1f}"))
    total = sum(s.distance for s in summaries)
    time = sum(s.duration for s in summaries)
    out.append(("total", "", "", duration(time), f"{total / 1000:.3f}",
                f"{max((s.max_speed for s in summaries), default=0.0):.1f}",
                f"{total / time * 3.6 if time else 0.0:.1f}"))
    return out


def table(summaries: list[TripSummary]) -> str:
    lines = rows(summaries)
    widths = [max(len(r[i]) for r in lines) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in lines) + "\n"


class Tee:
    """Every event to each sink; keeps the summaries."""

    def __init__(self, *sinks: TripSink) -> None:
        self.sinks = sinks
        self.summaries: list[TripSummary] = []
        self.points = 0  # every point of the range
        self.trip_points = 0  # those inside trips (what GPX, GeoJSON, KML and maps draw)

    def start_trip(self, index: int) -> None:
        for s in self.sinks:
            s.start_trip(index)

    def trip_point(self, point: Point) -> None:
        self.points += 1
        self.trip_points += 1
        for s in self.sinks:
            s.trip_point(point)

    def end_trip(self, summary: TripSummary) -> None:
        self.summaries.append(summary)
        for s in self.sinks:
            s.end_trip(summary)

    def other_point(self, point: Point) -> None:
        self.points += 1
        for s in self.sinks:
            s.other_point(point)
