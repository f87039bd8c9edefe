"""An HTML map with folium (Leaflet): the trips as layers (each a path, start and end markers,
its summary in popups) and a layer control.

Every layer is one GeoJSON object, whatever it holds: folium keeps some 60 kB of objects per
path, marker and popup until the map is rendered, which for a month of hourly rides made the
map's memory grow with the range. With at most `MAX_LAYERS` layers (a layer per trip up to
that, else runs of consecutive trips) and the points thinned by `Collector`, memory is
bounded whatever the range.

The page is one self-contained file: folium's links to Leaflet, jQuery, Bootstrap and Font
Awesome on CDNs are dropped and Leaflet's JavaScript and CSS (a pinned copy in `assets/leaflet`,
BSD-2-Clause, docs/decisions/0003-self-contained-html-map.md) are inlined, so the map and its
trips work opened from disk with no network; only the background tiles need one."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from importlib import resources
from typing import IO, Any

import folium

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.formats.collect import Collector, Trip
from bridge.toolbox.formats.labels import title, trip_text

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
START, END = "#00a000", "#d00000"
MAX_LAYERS = 100
# folium's <script src>/<link href> to CDNs (the only external resources besides the tiles)
_EXTERNAL = re.compile(r'<script src="https?://[^"]*">\s*</script>\s*'
                       r'|<link rel="stylesheet" href="https?://[^"]*"\s*/?>\s*')


def _leaflet() -> str:
    """Leaflet's CSS and JavaScript as inline elements (the layer control's icon a data URL)."""
    assets = resources.files("bridge.toolbox.formats") / "assets" / "leaflet"
    icon = base64.b64encode((assets / "layers.png").read_bytes()).decode()
    css = (assets / "leaflet.css").read_text(encoding="utf-8").replace(
        "url(images/layers.png)", f"url(data:image/png;base64,{icon})").replace(
        "url(images/layers-2x.png)", f"url(data:image/png;base64,{icon})")
    js = (assets / "leaflet.js").read_text(encoding="utf-8")
    js = js.replace("</script", "<\\/script")  # cannot end the element early
    return f"<style>{css}</style>\n<script>{js}</script>\n"


def self_contained(page: str) -> str:
    """`page` without its CDN links, Leaflet inlined at the top of its head."""
    page = _EXTERNAL.sub("", page)
    head = page.index("<head>") + len("<head>")
    return page[:head] + "\n" + _leaflet() + page[head:]


def groups(trips: Sequence[Trip], most: int = MAX_LAYERS) -> list[Sequence[Trip]]:
    """Consecutive trips, at most `most` groups of equal size (the last one smaller)."""
    size = max(1, -(-len(trips) // most))
    return [trips[i:i + size] for i in range(0, len(trips), size)]


def features(trip: Trip) -> list[dict[str, Any]]:
    """A trip's path and its start and end, GeoJSON features (longitude first)."""
    text = trip_text(trip.summary) if trip.summary else f"Trip {trip.index}"
    coords = [[p.lon, p.lat] for p in trip.points]
    color = COLORS[(trip.index - 1) % len(COLORS)]

    def feature(kind: str, geometry: dict[str, Any], colour: str, label: str
                ) -> dict[str, Any]:
        return {"type": "Feature", "geometry": geometry,
                "properties": {"kind": kind, "color": colour, "name": f"Trip {trip.index}",
                               "summary": html.escape(label)}}

    return [feature("path", {"type": "LineString", "coordinates": coords}, color, text),
            feature("start", {"type": "Point", "coordinates": coords[0]}, START,
                    f"Start: {text}"),
            feature("end", {"type": "Point", "coordinates": coords[-1]}, END, f"End: {text}")]


def _style(feature: dict[str, Any]) -> dict[str, Any]:
    colour = feature["properties"]["color"]
    return {"color": colour, "weight": 4, "fillColor": colour, "fillOpacity": 0.9}


class HtmlWriter(Collector):
    def __init__(self, out: IO[str], info: TrackInfo) -> None:
        super().__init__(info)
        self._out = out

    def close(self) -> None:
        fmap = folium.Map(tiles="OpenStreetMap", control_scale=True)
        fmap.get_root().html.add_child(  # type: ignore[attr-defined]
            folium.Element(
            f"<h3 style='margin:4px'>{html.escape(title(self.info))}</h3>"))
        trips = [trip for trip in self.trips if trip.points]
        for group in groups(trips):
            first, last = group[0].index, group[-1].index
            name = f"Trip {first}" if first == last else f"Trips {first} to {last}"
            layer = folium.FeatureGroup(name=name)
            folium.GeoJson(
                {"type": "FeatureCollection",
                 "features": [f for trip in group for f in features(trip)]},
                style_function=_style,
                marker=folium.CircleMarker(radius=7, fill=True),
                popup=folium.GeoJsonPopup(fields=["summary"], labels=False),
                tooltip=folium.GeoJsonTooltip(fields=["name"], labels=False),
            ).add_to(layer)
            layer.add_to(fmap)
        if trips:
            lats = [p.lat for trip in trips for p in trip.points]
            lons = [p.lon for trip in trips for p in trip.points]
            fmap.fit_bounds([[min(lats), min(lons)], [max(lats), max(lons)]])
        folium.LayerControl(collapsed=False).add_to(fmap)
        self._out.write(self_contained(fmap.get_root().render()))
