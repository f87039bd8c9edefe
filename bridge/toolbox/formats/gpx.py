"""GPX 1.1 with gpxpy: one track, one segment per trip, serialized point by point so the
file streams (gpxpy writes every element; nothing here builds XML by hand)."""

from __future__ import annotations

import datetime as dt
from typing import IO

import gpxpy.gpx
import gpxpy.gpxfield

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.points import Point
from bridge.toolbox.timeparse import iso
from bridge.toolbox.trips import TripSummary

VERSION = "1.1"


def _split(xml: str, closing: str) -> tuple[str, str]:
    at = xml.rindex(closing)
    return xml[:at], xml[at:]


class GpxWriter:
    def __init__(self, out: IO[str], info: TrackInfo) -> None:
        self._out = out
        doc = gpxpy.gpx.GPX()
        doc.creator = "flespi-bridge"
        doc.name = f"{info.name} ({info.device_id})"
        doc.description = f"{iso(info.start)} to {iso(info.end)}"
        doc.tracks.append(gpxpy.gpx.GPXTrack(name=doc.name))
        head, self._tail = _split(doc.to_xml(version=VERSION), "</trk>")
        out.write(head.rstrip() + "\n")
        segment = gpxpy.gpxfield.gpx_fields_to_xml(gpxpy.gpx.GPXTrackSegment(), "trkseg",
                                                   version=VERSION)
        self._seg_open, self._seg_close = _split(segment, "</trkseg>")

    def start_trip(self, index: int) -> None:
        self._out.write(self._seg_open)

    def trip_point(self, point: Point) -> None:
        gpx_point = gpxpy.gpx.GPXTrackPoint(
            round(point.lat, 7), round(point.lon, 7), elevation=point.alt,
            time=dt.datetime.fromtimestamp(point.ts, dt.UTC))
        self._out.write(gpxpy.gpxfield.gpx_fields_to_xml(gpx_point, "trkpt", version=VERSION))

    def end_trip(self, summary: TripSummary) -> None:
        self._out.write("\n" + self._seg_close)

    def other_point(self, point: Point) -> None:
        pass

    def close(self) -> None:
        self._out.write("\n" + self._tail)
