"""Trips kept in memory for the drawn formats (KML, PNG, HTML), thinned by time so a long
range keeps at most about `MAX_POINTS` points (one per time bucket, each trip's first and
last point always kept)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.points import Point
from bridge.toolbox.trips import TripSummary

MAX_POINTS = 20_000


@dataclass
class Trip:
    index: int
    points: list[Point] = field(default_factory=list)
    summary: TripSummary | None = None


class Collector:
    def __init__(self, info: TrackInfo, max_points: int = MAX_POINTS) -> None:
        self.info = info
        self.trips: list[Trip] = []
        self._bucket = max(0.0, (info.end - info.start) / max_points)
        self._pending: Point | None = None  # the trip's latest point, until kept or passed

    def _slot(self, point: Point) -> int:
        return int((point.ts - self.info.start) // self._bucket) if self._bucket else 0

    def start_trip(self, index: int) -> None:
        self.trips.append(Trip(index))
        self._pending = None

    def trip_point(self, point: Point) -> None:
        points = self.trips[-1].points
        if not points or not self._bucket or self._slot(point) != self._slot(points[-1]):
            points.append(point)
            self._pending = None
        else:
            self._pending = point

    def end_trip(self, summary: TripSummary) -> None:
        trip = self.trips[-1]
        if self._pending is not None:
            trip.points.append(self._pending)
            self._pending = None
        trip.summary = summary

    def other_point(self, point: Point) -> None:
        pass
