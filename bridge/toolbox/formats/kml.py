"""KML with simplekml: a folder per trip (its path and start/end placemarks), the trip
summary as the description."""

from __future__ import annotations

from typing import IO

import simplekml

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.formats.collect import Collector
from bridge.toolbox.formats.labels import title, trip_text
from bridge.toolbox.timeparse import iso


class KmlWriter(Collector):
    def __init__(self, out: IO[str], info: TrackInfo) -> None:
        super().__init__(info)
        self._out = out

    def close(self) -> None:
        kml = simplekml.Kml(name=title(self.info))
        for trip in self.trips:
            folder = kml.newfolder(name=f"Trip {trip.index}")
            text = trip_text(trip.summary) if trip.summary else ""
            line = folder.newlinestring(
                name=f"Trip {trip.index}", description=text,
                coords=[(p.lon, p.lat, p.alt or 0.0) for p in trip.points])
            line.style.linestyle.width = 4
            line.style.linestyle.color = simplekml.Color.blue
            line.timespan.begin = iso(trip.points[0].ts)
            line.timespan.end = iso(trip.points[-1].ts)
            for label, point in (("start", trip.points[0]), ("end", trip.points[-1])):
                folder.newpoint(name=f"Trip {trip.index} {label}", description=text,
                                coords=[(point.lon, point.lat)])
        self._out.write(kml.kml())
