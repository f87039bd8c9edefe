"""Splitting a stream of track points into trips, in bounded memory.

A trip is a run of moving points; it ends on a stop (not moving for `min_stop` seconds), a
gap (no point for `max_gap` seconds) or ignition off where the device reports it. Moving
means the reported speed (or, without one, the speed between the last two points) reaches
`min_speed` km/h. Short halts inside a trip (a traffic light) stay in it; a trip that ends on
a stop ends with its arrival, the first point stopped. Only the points of
the halt in progress are buffered, so memory is bounded by `min_stop`, not by the range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bridge.toolbox.geo import haversine
from bridge.toolbox.points import Point


@dataclass(frozen=True)
class TripOptions:
    min_speed: float = 3.0  # km/h
    min_stop: float = 300.0  # seconds
    max_gap: float = 600.0  # seconds


@dataclass(frozen=True)
class TripSummary:
    index: int  # 1-based
    start: float
    end: float
    points: int
    distance: float  # metres
    max_speed: float  # km/h

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def avg_speed(self) -> float:
        """km/h over the trip's duration."""
        return self.distance / self.duration * 3.6 if self.duration > 0 else 0.0


class TripSink(Protocol):
    def start_trip(self, index: int) -> None: ...
    def trip_point(self, point: Point) -> None: ...
    def end_trip(self, summary: TripSummary) -> None: ...
    def other_point(self, point: Point) -> None: ...


class _Trip:
    def __init__(self, index: int, first: Point, speed: float) -> None:
        self.index = index
        self.first = self.last = first
        self.points = 1
        self.distance = 0.0
        self.max_speed = speed

    def add(self, point: Point, speed: float) -> None:
        self.distance += haversine(self.last.lat, self.last.lon, point.lat, point.lon)
        self.last = point
        self.points += 1
        self.max_speed = max(self.max_speed, speed)

    def summary(self) -> TripSummary:
        return TripSummary(self.index, self.first.ts, self.last.ts, self.points,
                           self.distance, self.max_speed)


class TripSplitter:
    """Feed points in time order; the sink hears every point once, in order."""

    def __init__(self, sink: TripSink, options: TripOptions = TripOptions()) -> None:
        self.sink = sink
        self.options = options
        self.trips = 0
        self._trip: _Trip | None = None
        self._candidate: tuple[Point, float] | None = None  # a trip's first point
        self._halt: list[tuple[Point, float]] = []  # stationary points inside a trip
        self._last: Point | None = None

    def _speed(self, point: Point) -> float:
        if point.speed is not None:
            return point.speed
        last = self._last
        if last is None or point.ts <= last.ts:
            return 0.0
        return haversine(last.lat, last.lon, point.lat, point.lon) / (point.ts - last.ts) * 3.6

    def _end(self) -> None:
        if self._candidate is not None:
            self.sink.other_point(self._candidate[0])
            self._candidate = None
        if self._trip is not None:
            if self._halt:  # the arrival: the first point stopped belongs to the trip
                arrival, speed = self._halt.pop(0)
                self._trip.add(arrival, speed)
                self.sink.trip_point(arrival)
            self.sink.end_trip(self._trip.summary())
            self._trip = None
        for point, _ in self._halt:
            self.sink.other_point(point)
        self._halt.clear()

    def _moving(self, point: Point, speed: float) -> None:
        if self._trip is None and self._candidate is None:
            self._candidate = (point, speed)
            return
        if self._trip is None:
            assert self._candidate is not None
            first, first_speed = self._candidate
            self._candidate = None
            self.trips += 1
            self._trip = _Trip(self.trips, first, first_speed)
            self.sink.start_trip(self.trips)
            self.sink.trip_point(first)
        for halted, halted_speed in self._halt:
            self._trip.add(halted, halted_speed)
            self.sink.trip_point(halted)
        self._halt.clear()
        self._trip.add(point, speed)
        self.sink.trip_point(point)

    def feed(self, point: Point) -> None:
        last = self._last
        if last is not None and point.ts <= last.ts:
            return  # a duplicate or out of order: ignored
        speed = self._speed(point)
        self._last = point
        if last is not None and point.ts - last.ts > self.options.max_gap:
            self._end()
        if point.ignition is False:
            self._end()
            self.sink.other_point(point)
        elif speed >= self.options.min_speed:
            self._moving(point, speed)
        elif self._trip is not None:
            self._halt.append((point, speed))
            if point.ts - self._halt[0][0].ts >= self.options.min_stop:
                self._end()
        else:
            if self._candidate is not None:  # one moving point is not a trip
                self.sink.other_point(self._candidate[0])
                self._candidate = None
            self.sink.other_point(point)

    def close(self) -> None:
        self._end()
