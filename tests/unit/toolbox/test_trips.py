"""Trip splitting on synthetic tracks with known answers."""

from __future__ import annotations

import pytest
from support.toolbox_helpers import DEG

from bridge.toolbox.points import Point
from bridge.toolbox.trips import TripOptions, TripSplitter, TripSummary


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.summaries: list[TripSummary] = []

    def start_trip(self, index: int) -> None:
        self.events.append(("start", index))

    def trip_point(self, p: Point) -> None:
        self.events.append(("trip", p.ts))

    def end_trip(self, summary: TripSummary) -> None:
        self.summaries.append(summary)
        self.events.append(("end", summary.index))

    def other_point(self, p: Point) -> None:
        self.events.append(("other", p.ts))


def north(ts0: float, n: int, lat0: float = 0.0, metres_per_step: float = 100.0,
          step: float = 10.0, speed: float | None = 36.0) -> list[Point]:
    return [Point(ts0 + i * step, lat0 + i * metres_per_step / DEG, 0.0, None, speed)
            for i in range(n)]


def split(points: list[Point], options: TripOptions | None = None) -> Recorder:
    rec = Recorder()
    splitter = TripSplitter(rec, options or TripOptions())
    for p in points:
        splitter.feed(p)
    splitter.close()
    return rec


def test_two_trips_split_by_a_long_stop() -> None:
    first = north(0, 11)  # 1 km in 100 s at 36 km/h
    parked = [Point(100 + i * 10, first[-1].lat, 0.0, None, 0.0) for i in range(1, 61)]
    second = north(800, 21, lat0=1.0)  # 2 km
    rec = split(first + parked + second)
    # the first trip ends with its arrival, the first point parked (at the last position)
    assert [(s.index, round(s.distance), s.points) for s in rec.summaries] == [
        (1, 1000, 12), (2, 2000, 21)]
    one, two = rec.summaries
    assert (one.start, one.end, one.duration) == (0, 110, 110)
    assert one.avg_speed == pytest.approx(1000 / 110 * 3.6)
    assert one.max_speed == 36.0
    assert two.duration == 200
    assert two.avg_speed == pytest.approx(36.0)
    assert sum(1 for e in rec.events if e[0] == "other") == 59  # every point heard once


def test_a_short_halt_stays_in_the_trip() -> None:
    first = north(0, 11)
    halt = [Point(100 + i * 10, first[-1].lat, 0.0, None, 0.0) for i in range(1, 7)]  # 60 s
    rest = north(170, 11, lat0=first[-1].lat + 100 / DEG)
    rec = split(first + halt + rest)
    assert len(rec.summaries) == 1
    assert rec.summaries[0].points == 28
    assert rec.summaries[0].distance == pytest.approx(2100, rel=1e-6)
    assert rec.summaries[0].avg_speed == pytest.approx(2100 / 270 * 3.6)


def test_a_gap_ends_a_trip() -> None:
    rec = split(north(0, 5) + north(2000, 5, lat0=1.0), TripOptions(max_gap=600))
    assert [s.points for s in rec.summaries] == [5, 5]


def test_ignition_off_ends_a_trip_at_once() -> None:
    points = north(0, 5)
    off = Point(50, points[-1].lat, 0.0, None, 40.0, ignition=False)
    rec = split([*points, off, *north(60, 5, lat0=1.0)])
    assert [s.points for s in rec.summaries] == [5, 5]
    assert ("other", 50.0) in rec.events


def test_speed_from_positions_when_not_reported() -> None:
    rec = split(north(0, 11, speed=None))  # 100 m every 10 s: 36 km/h
    assert len(rec.summaries) == 1
    assert rec.summaries[0].max_speed == pytest.approx(36.0)
    assert rec.summaries[0].points == 10  # the first point has no speed of its own yet


def test_one_moving_point_is_no_trip() -> None:
    rec = split([Point(0, 0, 0, None, 0.0), Point(10, 0, 0, None, 20.0),
                 Point(20, 0, 0, None, 0.0)])
    assert rec.summaries == []
    assert len(rec.events) == 3
