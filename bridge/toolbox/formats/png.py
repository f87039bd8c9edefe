"""A PNG map with matplotlib (Agg): the path coloured by speed, start and end marked, a
scale bar and a title with the device and range."""

from __future__ import annotations

import math
from typing import IO

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.formats.collect import Collector
from bridge.toolbox.formats.labels import title
from bridge.toolbox.geo import haversine

WIDTH, HEIGHT, DPI = 1200, 800, 100
NICE = (1, 2, 5)


def scale_length(span_m: float) -> float:
    """A round length (1, 2 or 5 x 10^n metres) near a fifth of `span_m`."""
    target = max(span_m / 5, 1.0)
    exp = 10 ** math.floor(math.log10(target))
    return float(max(n * exp for n in NICE if n * exp <= target))


def scale_label(length_m: float) -> str:
    return f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"


class PngWriter(Collector):
    def __init__(self, out: IO[bytes], info: TrackInfo,
                 size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
        super().__init__(info)
        self._out = out
        self._size = size

    def close(self) -> None:
        # the Agg canvas directly: no pyplot state, no display needed
        fig = Figure(figsize=(self._size[0] / DPI, self._size[1] / DPI), dpi=DPI)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        self._draw(fig, ax)
        fig.savefig(self._out, format="png", dpi=DPI)

    def _draw(self, fig: Figure, ax: Axes) -> None:
        ax.set_title(title(self.info))
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        points = [p for trip in self.trips for p in trip.points]
        if not points:
            ax.text(0.5, 0.5, "no trips in this range", ha="center", va="center",
                    transform=ax.transAxes)
            return
        segments, speeds = [], []
        for trip in self.trips:
            for a, b in zip(trip.points, trip.points[1:], strict=False):
                segments.append([(a.lon, a.lat), (b.lon, b.lat)])
                speeds.append(b.speed or 0.0)
        lines = LineCollection(segments, cmap="plasma", linewidths=3)
        lines.set_array(speeds)
        ax.add_collection(lines)
        fig.colorbar(lines, ax=ax, label="speed, km/h")
        # every trip's start, then every end, each as one artist (not two per trip)
        for marker, color, index in (("o", "#00a000", 0), ("s", "#d00000", -1)):
            ax.plot([t.points[index].lon for t in self.trips],
                    [t.points[index].lat for t in self.trips], linestyle="none",
                    marker=marker, color=color, markersize=10)
        lats = [p.lat for p in points]
        lons = [p.lon for p in points]
        mid = (min(lats) + max(lats)) / 2
        squeeze = max(math.cos(math.radians(mid)), 0.01)  # ground metres per degree, lon/lat
        box = ax.get_position()
        ratio = (box.width * fig.get_figwidth()) / (box.height * fig.get_figheight())
        # spans in "lat-degree metres", widened so that the map fills the axes undistorted
        half_h = max((max(lats) - min(lats)) * 0.55, 2e-4)
        half_w = max((max(lons) - min(lons)) * 0.55 * squeeze, 2e-4)
        half_w, half_h = max(half_w, half_h * ratio), max(half_h, half_w / ratio)
        cx, cy = (min(lons) + max(lons)) / 2, mid
        ax.set_xlim(cx - half_w / squeeze, cx + half_w / squeeze)
        ax.set_ylim(cy - half_h, cy + half_h)
        ax.ticklabel_format(useOffset=False, style="plain")
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        span = haversine(mid, x0, mid, x1)
        length = scale_length(span)
        dlon = (x1 - x0) * length / span if span else 0
        sx, sy = x0 + (x1 - x0) * 0.05, y0 + (y1 - y0) * 0.05
        ax.plot([sx, sx + dlon], [sy, sy], color="black", linewidth=3)
        ax.text(sx + dlon / 2, sy + (y1 - y0) * 0.02, scale_label(length), ha="center",
                va="bottom", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        ax.grid(True, alpha=0.3)
