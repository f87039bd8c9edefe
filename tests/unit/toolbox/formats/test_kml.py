"""The KML writer: each trip's folder written and dropped."""

from __future__ import annotations

from support.toolbox_helpers import many_trips


def test_kml_memory_does_not_grow_with_the_number_of_trips() -> None:
    few, many = many_trips("kml", 20), many_trips("kml", 400)
    assert many < few * 1.5 + 500_000  # each trip's folder is written and dropped
