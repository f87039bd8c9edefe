"""The toolbox's pure parts: times, distances, trip splitting on synthetic tracks with known
answers, streaming in bounded memory, and the terminal-only progress bar."""

from __future__ import annotations

import io
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator

import pytest

from bridge.normalize.parameters import Parameters
from bridge.toolbox.formats import TrackInfo, writer
from bridge.toolbox.formats import html as html_format
from bridge.toolbox.formats.collect import Trip
from bridge.toolbox.geo import haversine
from bridge.toolbox.points import Point, point
from bridge.toolbox.progress import Progress
from bridge.toolbox.summary import Tee, table
from bridge.toolbox.telemetry_cmd import normalized
from bridge.toolbox.timeparse import duration, iso, parse_time
from bridge.toolbox.trips import TripOptions, TripSplitter, TripSummary

NOW = 1706905170.0  # 2024-02-02T20:19:30Z


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW),
    ("-24h", NOW - 86400),
    ("-30m", NOW - 1800),
    ("-7d", NOW - 7 * 86400),
    ("-1.5h", NOW - 5400),
    ("today", 1706832000.0),
    ("yesterday", 1706745600.0),
    ("1706905170", NOW),
    ("2024-02-02T20:19:30Z", NOW),
    ("2024-02-02T22:19:30+02:00", NOW),
    ("2024-02-02T20:19:30", NOW),  # no zone: UTC
    ("2024-02-02", 1706832000.0),
])
def test_times(text: str, expected: float) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "-h", "-xh", "last tuesday", "2024-13-01", "nan"])
def test_bad_times(text: str) -> None:
    with pytest.raises(ValueError, match="bad"):
        parse_time(text, NOW)


def test_formatting() -> None:
    assert iso(NOW + 0.9) == "2024-02-02T20:19:30Z"
    assert duration(3723) == "1:02:03"


def test_haversine_known_distances() -> None:
    assert haversine(0, 0, 0, 1) == pytest.approx(111_195, rel=1e-4)  # a degree at the equator
    assert haversine(0, 0, 1, 0) == pytest.approx(111_195, rel=1e-4)
    # Paris - London, 343.5 km on the mean sphere
    assert haversine(48.8566, 2.3522, 51.5074, -0.1278) / 1000 == pytest.approx(343.5, abs=0.5)
    assert haversine(-17.7, -63.1, -17.7, -63.1) == 0


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


DEG = 111_195.08  # metres per degree of latitude on the mean sphere (haversine's radius)


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
    assert [(s.index, round(s.distance), s.points) for s in rec.summaries] == [
        (1, 1000, 11), (2, 2000, 21)]
    one, two = rec.summaries
    assert (one.start, one.end, one.duration) == (0, 100, 100)
    assert one.avg_speed == pytest.approx(36.0)
    assert one.max_speed == 36.0
    assert two.duration == 200
    assert two.avg_speed == pytest.approx(36.0)
    assert sum(1 for e in rec.events if e[0] == "other") == 60  # every point heard once


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


def test_summary_table() -> None:
    text = table([TripSummary(1, NOW, NOW + 600, 61, 2500.0, 30.0)])
    lines = text.splitlines()
    assert lines[0].split() == ["trip", "start", "end", "duration", "distance_km", "max_kmh",
                                "avg_kmh"]
    assert lines[1].split() == ["1", "2024-02-02T20:19:30Z", "2024-02-02T20:29:30Z",
                                "0:10:00", "2.500", "30.0", "15.0"]
    assert lines[2].split()[0] == "total"


def test_points_from_flespi_messages() -> None:
    msg = {"timestamp": NOW, "position.latitude": -17.72, "position.longitude": -63.17,
           "position.altitude": 400.1, "position.speed": 12, "battery.level": 70,
           "engine.ignition.status": 1}
    p = point(msg, ("battery.level",))
    assert p == Point(NOW, -17.72, -63.17, 400.1, 12.0, True, {"battery.level": 70})
    assert point({**msg, "position.valid": False}) is None
    assert point({**msg, "position.latitude": 91}) is None
    assert point({"timestamp": NOW}) is None


def _peak(fmt: str, seconds: float, points: Iterator[Point]) -> int:
    """Peak bytes allocated while `fmt` writes `points`, generated one at a time as pages
    arrive, to a sink that drops the text, as a file does once written."""

    class Drop(io.StringIO):
        def write(self, s: str) -> int:
            return len(s)

    tracemalloc.start()
    try:
        out = writer(fmt, Drop(), TrackInfo(1, "x", 0, seconds))
        splitter = TripSplitter(Tee(out), TripOptions())
        for p in points:
            splitter.feed(p)
        splitter.close()
        out.close()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _stream(fmt: str, n: int) -> int:
    """`_peak` of n 1-second points on one ride."""
    return _peak(fmt, n, (Point(float(i), i * 5 / DEG, 0.0, None, 18.0) for i in range(n)))


@pytest.mark.parametrize("fmt", ["gpx", "geojson", "csv"])
def test_streaming_formats_use_bounded_memory(fmt: str) -> None:
    small, large = _stream(fmt, 5_000), _stream(fmt, 50_000)
    assert large < small * 1.5 + 200_000  # ten times the points, about the same peak


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(0, 100, stream, mininterval=0)
        for ts in range(0, 101, 10):
            bar.update(float(ts))
        bar.close()
    assert "%" in tty.getvalue()
    assert "100%" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_the_cli_loads_without_the_tools_extra() -> None:
    """`run`, `demo` and the rest must work from a plain `pip install`: the toolbox's
    optional libraries are imported only by the commands that use them."""
    hide = "; ".join(f"sys.modules[{m!r}] = None" for m in
                     ("tqdm", "gpxpy", "simplekml", "matplotlib", "folium"))
    code = (f"import sys; {hide}; from bridge.app.cli import parser; "
            "args = parser().parse_args(['track', '7', '--from=-1h']); print(args.device)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "7"


def _many_trips(fmt: str, trips: int) -> int:
    """`_peak` of `trips` rides of 10 points, one each hour, parked in between."""
    return _peak(fmt, trips * 3600.0, (Point(t * 3600.0 + i * 10, i * 100 / DEG, 0.0, None, 36.0)
                                       for t in range(trips) for i in range(10)))


def test_kml_memory_does_not_grow_with_the_number_of_trips() -> None:
    few, many = _many_trips("kml", 20), _many_trips("kml", 400)
    assert many < few * 1.5 + 500_000  # each trip's folder is written and dropped


def test_html_memory_grows_with_points_not_with_folium_objects_per_trip() -> None:
    _many_trips("html", 1)  # folium imported and warm
    few, many = _many_trips("html", 200), _many_trips("html", 1000)
    # 800 more trips of 10 points: their points and features, some 8 kB a trip; a folium
    # path, two markers and three popups per trip cost some 70 kB a trip
    assert many - few < 800 * 20_000, (few, many)


def test_a_map_of_many_trips_keeps_every_trip_in_at_most_max_layers_layers() -> None:
    trips = [Trip(i, [Point(i * 3600.0, 0.001 * i, 0.0, None, 30.0),
                      Point(i * 3600.0 + 60, 0.001 * i + 0.01, 0.0, None, 30.0)])
             for i in range(1, 251)]
    grouped = html_format.groups(trips)
    assert len(grouped) <= html_format.MAX_LAYERS
    assert [t.index for group in grouped for t in group] == list(range(1, 251))
    assert len({len(group) for group in grouped[:-1]}) == 1  # equal runs, the last shorter
    assert html_format.groups(trips[:7]) == [[t] for t in trips[:7]]  # a layer per trip


def test_telemetry_reads_position_parameters_of_their_own_and_skips_the_copies() -> None:
    """`position.satellites` is a catalogue row of its own (a tracker may send it without
    the `position` object's field); `position.latitude` only repeats the object."""
    telemetry = {
        "position": {"ts": 1.0, "value": {"latitude": -17.7, "longitude": -63.2}},
        "position.latitude": {"ts": 1.0, "value": -17.7},
        "position.satellites": {"ts": 1.0, "value": 9},
    }
    doc = normalized(telemetry, Parameters())
    assert doc["attributes"]["satellites"] == 9
    assert doc["attributes"]["latitude"] == -17.7
    assert doc["unmapped"] == {}
