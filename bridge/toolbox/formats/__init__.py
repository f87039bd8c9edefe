"""Track writers: each is a `TripSink` with `close()`, writing to an open file as points
arrive (GPX, GeoJSON, CSV stream every point; KML, PNG and HTML draw a thinned copy, KML
writing each trip as it ends; HTML keeps folium's objects of every trip until it renders).

May import: the toolbox's points, trips and time parsing; the format libraries of the
`tools` extra, each only in its own writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any, Protocol

from bridge.toolbox.trips import TripSink

FORMATS = ("gpx", "geojson", "kml", "csv", "png", "html")
BINARY = ("png",)


@dataclass(frozen=True)
class TrackInfo:
    device_id: int
    name: str
    start: float
    end: float
    params: tuple[str, ...] = ()


class TrackWriter(TripSink, Protocol):
    def close(self) -> None: ...


def writer(fmt: str, out: IO[Any], info: TrackInfo) -> TrackWriter:
    """The writer of `fmt` on `out` (binary for png, text otherwise)."""
    if fmt == "gpx":
        from bridge.toolbox.formats.gpx import GpxWriter
        return GpxWriter(out, info)
    if fmt == "geojson":
        from bridge.toolbox.formats.geojson import GeoJsonWriter
        return GeoJsonWriter(out, info)
    if fmt == "csv":
        from bridge.toolbox.formats.csvfile import CsvWriter
        return CsvWriter(out, info)
    if fmt == "kml":
        from bridge.toolbox.formats.kml import KmlWriter
        return KmlWriter(out, info)
    if fmt == "png":
        from bridge.toolbox.formats.png import PngWriter
        return PngWriter(out, info)
    if fmt == "html":
        from bridge.toolbox.formats.html import HtmlWriter
        return HtmlWriter(out, info)
    raise ValueError(f"unknown format {fmt!r}")
