"""Track points from flespi's messages."""

from __future__ import annotations

from support.toolbox_helpers import NOW

from bridge.toolbox.points import Point, point


def test_points_from_flespi_messages() -> None:
    msg = {"timestamp": NOW, "position.latitude": -17.72, "position.longitude": -63.17,
           "position.altitude": 400.1, "position.speed": 12, "battery.level": 70,
           "engine.ignition.status": 1}
    p = point(msg, ("battery.level",))
    assert p == Point(NOW, -17.72, -63.17, 400.1, 12.0, True, {"battery.level": 70})
    assert point({**msg, "position.valid": False}) is None
    assert point({**msg, "position.latitude": 91}) is None
    assert point({"timestamp": NOW}) is None
