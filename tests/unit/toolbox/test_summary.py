"""The trip table."""

from __future__ import annotations

from support.toolbox_helpers import NOW

from bridge.toolbox.summary import table
from bridge.toolbox.trips import TripSummary


def test_summary_table() -> None:
    text = table([TripSummary(1, NOW, NOW + 600, 61, 2500.0, 30.0)])
    lines = text.splitlines()
    assert lines[0].split() == ["trip", "start", "end", "duration", "distance_km", "max_kmh",
                                "avg_kmh"]
    assert lines[1].split() == ["1", "2024-02-02T20:19:30Z", "2024-02-02T20:29:30Z",
                                "0:10:00", "2.500", "30.0", "15.0"]
    assert lines[2].split()[0] == "total"
