"""The HTML map: memory per point, trips grouped in at most MAX_LAYERS layers."""

from __future__ import annotations

from support.toolbox_helpers import many_trips

from bridge.toolbox.formats import html as html_format
from bridge.toolbox.formats.collect import Trip
from bridge.toolbox.points import Point


def test_html_memory_grows_with_points_not_with_folium_objects_per_trip() -> None:
    many_trips("html", 1)  # folium imported and warm
    few, many = many_trips("html", 200), many_trips("html", 1000)
    # 800 more trips of 10 points: their points and features, some 8 kB a trip; a folium
    # path, two markers and three popups per trip cost some 70 kB a trip
    assert many - few < 800 * 20_000, (few, many)


def test_a_map_of_many_trips_keeps_every_trip_in_at_most_max_layers_layers() -> None:
    trips = [Trip(i, [Point(i * 3600.0, 0.001 * i, 0.0, None, 30.0),
                      Point(i * 3600.0 + 60, 0.001 * i + 0.01, 0.0, None, 30.0)])
             for i in range(1, 251)]
    grouped = html_format.groups(trips)
    assert len(grouped) <= html_format.MAX_LAYERS
    assert [t.index for group in grouped for t in group] == list(range(1, 251))
    assert len({len(group) for group in grouped[:-1]}) == 1  # equal runs, the last shorter
    assert html_format.groups(trips[:7]) == [[t] for t in trips[:7]]  # a layer per trip
