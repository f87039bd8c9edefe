"""The streaming track writers (GPX, GeoJSON, CSV) in bounded memory."""

from __future__ import annotations

import pytest
from support.toolbox_helpers import DEG, peak

from bridge.toolbox.points import Point


def _stream(fmt: str, n: int) -> int:
    """`peak` of n 1-second points on one ride."""
    return peak(fmt, n, (Point(float(i), i * 5 / DEG, 0.0, None, 18.0) for i in range(n)))


@pytest.mark.parametrize("fmt", ["gpx", "geojson", "csv"])
def test_streaming_formats_use_bounded_memory(fmt: str) -> None:
    small, large = _stream(fmt, 5_000), _stream(fmt, 50_000)
    assert large < small * 1.5 + 200_000  # ten times the points, about the same peak
