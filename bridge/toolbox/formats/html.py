"""An HTML map with folium (Leaflet): each trip a layer (path, start and end markers) with
its summary in popups, and a layer control."""

from __future__ import annotations

import html
from typing import IO

import folium

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.formats.collect import Collector
from bridge.toolbox.formats.labels import title, trip_text

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")


class HtmlWriter(Collector):
    def __init__(self, out: IO[str], info: TrackInfo) -> None:
        super().__init__(info)
        self._out = out

    def close(self) -> None:
        points = [p for trip in self.trips for p in trip.points]
        fmap = folium.Map(tiles="OpenStreetMap", control_scale=True)
        fmap.get_root().html.add_child(  # type: ignore[attr-defined]
            folium.Element(
            f"<h3 style='margin:4px'>{html.escape(title(self.info))}</h3>"))
        for trip in self.trips:
            text = html.escape(trip_text(trip.summary) if trip.summary else "")
            layer = folium.FeatureGroup(name=f"Trip {trip.index}")
            coords = [(p.lat, p.lon) for p in trip.points]
            color = COLORS[(trip.index - 1) % len(COLORS)]
            folium.PolyLine(  # type: ignore[no-untyped-call]
                coords, color=color, weight=4, popup=folium.Popup(text),
                            tooltip=f"Trip {trip.index}").add_to(layer)
            folium.Marker(coords[0], popup=folium.Popup(f"Start: {text}"),
                          icon=folium.Icon(color="green")).add_to(layer)
            folium.Marker(coords[-1], popup=folium.Popup(f"End: {text}"),
                          icon=folium.Icon(color="red")).add_to(layer)
            layer.add_to(fmap)
        if points:
            fmap.fit_bounds([[min(p.lat for p in points), min(p.lon for p in points)],
                             [max(p.lat for p in points), max(p.lon for p in points)]])
        folium.LayerControl(collapsed=False).add_to(fmap)
        self._out.write(fmap.get_root().render())
