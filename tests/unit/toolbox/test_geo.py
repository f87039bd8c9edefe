"""Distances on the mean sphere."""

from __future__ import annotations

import pytest

from bridge.toolbox.geo import haversine


def test_haversine_known_distances() -> None:
    assert haversine(0, 0, 0, 1) == pytest.approx(111_195, rel=1e-4)  # a degree at the equator
    assert haversine(0, 0, 1, 0) == pytest.approx(111_195, rel=1e-4)
    # Paris - London, 343.5 km on the mean sphere
    assert haversine(48.8566, 2.3522, 51.5074, -0.1278) / 1000 == pytest.approx(343.5, abs=0.5)
    assert haversine(-17.7, -63.1, -17.7, -63.1) == 0
