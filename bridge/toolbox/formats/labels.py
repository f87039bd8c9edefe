"""Human-readable trip texts shared by the drawn formats. Pure functions."""

from __future__ import annotations

from bridge.toolbox.formats import TrackInfo
from bridge.toolbox.timeparse import duration, iso
from bridge.toolbox.trips import TripSummary


def title(info: TrackInfo) -> str:
    return f"{info.name} ({info.device_id}): {iso(info.start)} to {iso(info.end)}"


def trip_text(s: TripSummary) -> str:
    return (f"Trip {s.index}: {iso(s.start)} to {iso(s.end)}, {duration(s.duration)}, "
            f"{s.distance / 1000:.2f} km, max {s.max_speed:.1f} km/h, "
            f"avg {s.avg_speed:.1f} km/h")
