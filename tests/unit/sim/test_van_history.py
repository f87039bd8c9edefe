"""The simulated van's history (what the simulator's REST API serves for a van): its own
motion model, continuous across hours, the same whatever range is asked."""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import pytest

from bridge.sim import history, van_history
from bridge.sim.fleet import Fleet, SimDevice
from bridge.toolbox.geo import haversine

DAY = (math.floor(time.time() / 86400) - 2) * 86400  # two days ago, 00:00 UTC


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(2, kind="vans", seed=3)


@pytest.fixture(scope="module")
def van(fleet: Fleet) -> SimDevice:
    return next(iter(fleet.devices.values()))


@pytest.fixture(scope="module")
def day(fleet: Fleet, van: SimDevice) -> list[dict[str, Any]]:
    return list(history.messages(fleet, van, DAY, DAY + 86400))


def test_the_odometer_follows_the_positions_across_hours(day: list[dict[str, Any]]) -> None:
    assert len(day) == 8641  # one message every 10 s, both ends included
    for a, b in itertools.pairwise(day):
        driven = (b["vehicle.mileage"] - a["vehicle.mileage"]) * 1000
        moved = haversine(a["position.latitude"], a["position.longitude"],
                          b["position.latitude"], b["position.longitude"])
        assert driven >= 0
        assert moved == pytest.approx(driven, abs=25)  # street corners, rounding
        if not a["engine.ignition.status"]:  # parked: nothing moves or counts
            assert driven == pytest.approx(0, abs=1e-6)
            assert b["engine.motorhours"] == a["engine.motorhours"]
        else:
            assert a["position.speed"] > 0
            assert driven == pytest.approx(a["position.speed"] / 3.6 * 10, abs=1.5)  # rounding
    working = len(van_history.WORK_HOURS)
    assert day[-1]["vehicle.mileage"] - day[0]["vehicle.mileage"] == pytest.approx(
        working * van_history.HOUR_KM, abs=1e-6)
    assert day[-1]["engine.motorhours"] - day[0]["engine.motorhours"] == pytest.approx(
        working * van_history.DRIVE / 3600, abs=1e-3)


def test_fuel_drops_while_driving_and_refills_only_when_parked(
        day: list[dict[str, Any]]) -> None:
    refills = 0
    for a, b in itertools.pairwise(day):
        if b["fuel.level"] > a["fuel.level"]:
            refills += 1
            assert not a["engine.ignition.status"]
            assert not b["engine.ignition.status"]
            assert b["fuel.level"] == van_history.FULL
        used = b["fuel.consumed"] - a["fuel.consumed"]
        assert used == pytest.approx((b["vehicle.mileage"] - a["vehicle.mileage"])
                                     * 0.11, abs=2e-3)
    assert refills <= 1  # every 16 working hours: at most once in a day of 10
    assert all(0 < m["fuel.level"] <= 100 for m in day)


def test_nights_are_parked_and_days_have_drives(day: list[dict[str, Any]]) -> None:
    night = [m for m in day if (m["timestamp"] - DAY) // 3600 not in van_history.WORK_HOURS]
    assert not any(m["engine.ignition.status"] for m in night)
    ignition = [m["engine.ignition.status"] for m in day]
    drives = sum(1 for a, b in itertools.pairwise(ignition) if b and not a)
    assert 2 * 10 <= drives <= 4 * 10
    assert {"can.engine.rpm", "din.1", "engine.ignition.status", "device.type.id"} <= day[0].keys()
    assert day[0]["device.name"].startswith("van-")


def test_any_range_gives_the_same_messages(fleet: Fleet, van: SimDevice,
                                           day: list[dict[str, Any]]) -> None:
    start, end = DAY + 13.5 * 3600, DAY + 14.25 * 3600
    part = list(history.messages(fleet, van, start, end))
    assert part == [m for m in day if start <= m["timestamp"] <= end]
    other = list(history.messages(fleet, next(d for d in fleet.devices.values()
                                              if d.id != van.id), start, end))
    assert [m["position.latitude"] for m in other] != [m["position.latitude"] for m in part]
