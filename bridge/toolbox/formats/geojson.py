"""GeoJSON (RFC 7946): a FeatureCollection with one LineString per trip, written as the
points arrive. Positions are [longitude, latitude(, altitude)], WGS 84, no `crs` member."""

from __future__ import annotations

from typing import IO, Any

import orjson

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.points import Point
from bridge.toolbox.timeparse import iso
from bridge.toolbox.trips import TripSummary


def summary_properties(info: TrackInfo, s: TripSummary) -> dict[str, Any]:
    return {
        "device_id": info.device_id, "device_name": info.name, "trip": s.index,
        "start": iso(s.start), "end": iso(s.end), "duration_s": round(s.duration),
        "distance_m": round(s.distance, 1), "max_speed_kmh": round(s.max_speed, 1),
        "avg_speed_kmh": round(s.avg_speed, 1), "points": s.points,
    }


class GeoJsonWriter:
    def __init__(self, out: IO[str], info: TrackInfo) -> None:
        self._out = out
        self._info = info
        self._features = 0
        self._first = True
        out.write('{"type":"FeatureCollection","features":[')

    def start_trip(self, index: int) -> None:
        self._out.write(("," if self._features else "")
                        + '\n{"type":"Feature","geometry":{"type":"LineString","coordinates":[')
        self._features += 1
        self._first = True

    def trip_point(self, point: Point) -> None:
        pos = [round(point.lon, 7), round(point.lat, 7)]
        if point.alt is not None:
            pos.append(round(point.alt, 1))
        self._out.write(("" if self._first else ",") + orjson.dumps(pos).decode())
        self._first = False

    def end_trip(self, summary: TripSummary) -> None:
        props = orjson.dumps(summary_properties(self._info, summary)).decode()
        self._out.write(f']}},"properties":{props}}}')

    def other_point(self, point: Point) -> None:
        pass

    def close(self) -> None:
        self._out.write("\n]}\n")
