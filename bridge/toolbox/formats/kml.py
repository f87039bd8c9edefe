"""KML with simplekml: a folder per trip (its path and start/end placemarks), the trip
summary as the description. Each trip's folder is serialized by simplekml and written when
the trip ends, then dropped: simplekml's objects cost some 30 kB a trip, so a document built
whole would grow with the number of trips (a year of rides: hundreds of MB)."""

from __future__ import annotations

from typing import IO

import simplekml

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.formats.collect import Collector, Trip
from bridge.toolbox.formats.labels import title, trip_text
from bridge.toolbox.timeparse import iso
from bridge.toolbox.trips import TripSummary

DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


def folder(trip: Trip) -> str:
    """The trip's `<Folder>` as simplekml writes it."""
    made = simplekml.Kml().newfolder(name=f"Trip {trip.index}")
    text = trip_text(trip.summary) if trip.summary else ""
    line = made.newlinestring(
        name=f"Trip {trip.index}", description=text,
        coords=[(p.lon, p.lat, p.alt or 0.0) for p in trip.points])
    line.style.linestyle.width = 4
    line.style.linestyle.color = simplekml.Color.blue
    line.timespan.begin = iso(trip.points[0].ts)
    line.timespan.end = iso(trip.points[-1].ts)
    for label, point in (("start", trip.points[0]), ("end", trip.points[-1])):
        made.newpoint(name=f"Trip {trip.index} {label}", description=text,
                      coords=[(point.lon, point.lat)])
    return str(made)


class KmlWriter(Collector):
    def __init__(self, out: IO[str], info: TrackInfo) -> None:
        super().__init__(info)
        self._out = out
        document = simplekml.Kml(name=title(info)).kml(format=False)
        at = document.rindex("</Document>")
        out.write(DECLARATION + document[:at] + "\n")
        self._tail = document[at:] + "\n"

    def end_trip(self, summary: TripSummary) -> None:
        super().end_trip(summary)
        self._out.write(folder(self.trips.pop()) + "\n")

    def close(self) -> None:
        self._out.write(self._tail)
