"""The simulated fleet's message history, from the same motion models as its live messages:
each hour a scooter is parked, unlocked for one ride at 8-25 km/h around Santa Cruz, then
locked again; a van's history is its own model's (`bridge.sim.van_history`: drives with the
ignition on between parks, mileage, fuel). Deterministic per device and hour (any range, any
paging, same answer), and computed on demand, so an hour costs at most 3600/period steps and
no history is stored."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from bridge.sim import van_history
from bridge.sim.fleet import HOME, Fleet, SimDevice, _position, _voltage

SLOT = van_history.SLOT  # seconds: a scooter rides once an hour, a van's history goes by hours
METRES_PER_DEGREE = 111_320.0


def _slot_messages(fleet: Fleet, dev: SimDevice, slot: int, period: float
                   ) -> Iterator[dict[str, Any]]:
    rng = random.Random(f"{dev.id}:{slot}")
    lat = HOME[0] + rng.uniform(-0.02, 0.02)
    lon = HOME[1] + rng.uniform(-0.02, 0.02)
    alt = rng.uniform(395, 420)
    ride_start = rng.uniform(0, 1200)
    ride_end = ride_start + rng.uniform(600, 1800)
    heading = rng.uniform(0, 360)
    speed = 0.0
    level = 100 - slot % 60
    start = slot * SLOT
    steps = math.ceil(SLOT / period)
    for k in range(steps):
        offset = k * period
        moving = ride_start <= offset < ride_end
        if moving:
            heading = (heading + rng.uniform(-25, 25)) % 360
            speed = round(min(25.0, max(8.0, (speed or 15.0) + rng.uniform(-3, 3))), 1)
            step = speed / 3.6 * period
            lat += step * math.cos(math.radians(heading)) / METRES_PER_DEGREE
            lon += step * math.sin(math.radians(heading)) / (
                METRES_PER_DEGREE * math.cos(math.radians(lat)))
        else:
            speed = 0.0
        pos = _position(lat, lon, alt, rng.randint(6, 14), rng.uniform(0.6, 1.4), speed,
                        round(heading) % 360)
        values: dict[str, Any] = {f"position.{k}": v for k, v in pos.items()}
        values.update({
            "battery.level": level, "battery.voltage": _voltage(level),
            "battery.charging.status": False, "gsm.signal.level": 50 + 5 * rng.randint(0, 10),
            "lock.status": not moving, "message.type": "H0",
        })
        yield fleet.message(dev, values, start + offset)


def messages(fleet: Fleet, dev: SimDevice, start: float, end: float, period: float = 10.0
             ) -> Iterator[dict[str, Any]]:
    """The device's messages with `start <= timestamp <= end`, oldest first (flat keys as
    flespi stores them: `position.latitude`, `battery.level`, ...), from the device's own
    motion model."""
    if end < start:
        return
    hour = van_history.slot_messages if dev.profile == "van" else _slot_messages
    for slot in range(math.floor(start / SLOT), math.floor(end / SLOT) + 1):
        for message in hour(fleet, dev, slot, period):
            if start <= message["timestamp"] <= end:
                yield message
            elif message["timestamp"] > end:
                return
