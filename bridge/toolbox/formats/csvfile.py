"""CSV of every positioned point: timestamp, lat, lon, altitude, speed, trip, parameters."""

from __future__ import annotations

import csv
from typing import IO, Any

import orjson

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.points import Point
from bridge.toolbox.timeparse import iso
from bridge.toolbox.trips import TripSummary


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, str | int | float) and not isinstance(value, bool)):
        return "" if value is None else value
    return orjson.dumps(value).decode()


class CsvWriter:
    def __init__(self, out: IO[str], info: TrackInfo) -> None:
        self._csv = csv.writer(out, lineterminator="\n")
        self._params = info.params
        self._trip: int | None = None
        self._csv.writerow(["timestamp", "latitude", "longitude", "altitude", "speed", "trip",
                            *info.params])

    def _row(self, p: Point) -> None:
        self._csv.writerow([iso(p.ts), p.lat, p.lon, _cell(p.alt), _cell(p.speed),
                            _cell(self._trip), *(_cell(p.extra.get(k)) for k in self._params)])

    def start_trip(self, index: int) -> None:
        self._trip = index

    def trip_point(self, point: Point) -> None:
        self._row(point)

    def end_trip(self, summary: TripSummary) -> None:
        self._trip = None

    def other_point(self, point: Point) -> None:
        self._row(point)

    def close(self) -> None:
        pass
