"""The simulated delivery van: a CAN-connected tracker in a light commercial vehicle.

Each message stands for `PERIOD` seconds of the van's life. It drives its round on the ring
roads of Santa Cruz (a closed route of straight streets between waypoints) with the ignition
on, then parks with the ignition off, and again. Mileage and engine hours only grow (while
driving), fuel drops with the distance and jumps back up when the van refuels at a stop, the
coolant warms up on the road and cools down when parked; a sharp slow-down is reported as
a harsh braking event (in that message only). Parameter names are flespi's.

Pure and deterministic for a seed (`random.Random` passed in).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

DEVICE_TYPE_ID = 7420  # the simulator's own id for its CAN van tracker
PROTOCOL_ID = 14
PERIOD = 10.0  # seconds of van time per message
TANK = 80.0  # litres
CONSUMPTION = 0.11  # litres per km
REFUEL_BELOW = 20.0  # percent: the van refuels at its next stop
HARSH_BRAKING = 7.0  # km/h lost within one PERIOD: the tracker reports harsh braking
METRES_PER_DEGREE = 111_320.0
OPERATOR = "73602"
# Waypoints of the van's round (Santa Cruz de la Sierra, along its ring roads), in order.
ROUTE: tuple[tuple[float, float], ...] = (
    (-17.7695, -63.1822), (-17.7628, -63.1989), (-17.7489, -63.2061),
    (-17.7334, -63.2034), (-17.7212, -63.1921), (-17.7166, -63.1754),
    (-17.7215, -63.1590), (-17.7337, -63.1488), (-17.7502, -63.1470),
    (-17.7634, -63.1553), (-17.7712, -63.1680),
)
# Device settings: name -> initial value (fleet.SETTINGS makes them flespi settings).
SETTINGS: dict[str, Any] = {
    "report_interval_moving": 10,
    "report_interval_parked": 300,
    "overspeed_limit": 90,
    "odometer_source": "can",
}


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Metres between two close points (equirectangular)."""
    dy = (b[0] - a[0]) * METRES_PER_DEGREE
    dx = (b[1] - a[1]) * METRES_PER_DEGREE * math.cos(math.radians(a[0]))
    return math.hypot(dx, dy)


# metres from the first waypoint to each waypoint along the round, and the round's length
ROUTE_STARTS: tuple[float, ...] = tuple(
    sum(_distance(ROUTE[i], ROUTE[(i + 1) % len(ROUTE)]) for i in range(k))
    for k in range(len(ROUTE)))
ROUTE_LENGTH = ROUTE_STARTS[-1] + _distance(ROUTE[-1], ROUTE[0])


def _bearing(a: tuple[float, float], b: tuple[float, float]) -> int:
    dy = b[0] - a[0]
    dx = (b[1] - a[1]) * math.cos(math.radians(a[0]))
    return round(math.degrees(math.atan2(dx, dy))) % 360


@dataclass
class Van:
    """Where a van is in its life; `telemetry()` is what its tracker reports."""

    segment: int
    along: float  # metres into the segment
    driving: bool
    steps_left: int
    speed: float = 0.0
    mileage: float = 0.0  # km
    motorhours: float = 0.0  # h
    fuel: float = 100.0  # percent
    consumed: float = 0.0  # litres
    coolant: float = 25.0  # °C
    door: bool = False
    signal: int = 80
    braked: bool = False  # slowed by HARSH_BRAKING km/h or more within the last step

    @classmethod
    def start(cls, rng: random.Random) -> Van:
        return cls(segment=rng.randrange(len(ROUTE)), along=0.0, driving=rng.random() < 0.5,
                   steps_left=rng.randint(5, 40),
                   mileage=round(rng.uniform(20_000, 180_000), 1),
                   motorhours=round(rng.uniform(800, 6_000), 2),
                   fuel=round(rng.uniform(35, 95), 1), consumed=round(rng.uniform(2e3, 2e4), 1),
                   coolant=25.0, signal=rng.choice(range(50, 101, 5)))

    def point(self) -> tuple[float, float, int]:
        a, b = ROUTE[self.segment], ROUTE[(self.segment + 1) % len(ROUTE)]
        f = min(1.0, self.along / max(_distance(a, b), 1.0))
        return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, _bearing(a, b)

    def place(self, metres: float) -> None:
        """Put the van `metres` along its round from the first waypoint (any distance: the
        round is closed), so that a history can derive its position from its mileage."""
        metres %= ROUTE_LENGTH
        segment = max(i for i, start in enumerate(ROUTE_STARTS) if start <= metres)
        self.segment, self.along = segment, metres - ROUTE_STARTS[segment]

    def step(self, rng: random.Random) -> None:
        """`PERIOD` seconds later."""
        self.steps_left -= 1
        if self.steps_left <= 0:
            self.driving = not self.driving
            self.steps_left = rng.randint(30, 90) if self.driving else rng.randint(6, 20)
            if not self.driving and self.fuel < REFUEL_BELOW:
                self.fuel = round(rng.uniform(92, 100), 1)  # at the pump
        before = self.speed
        if self.driving:
            self.speed = round(min(70.0, max(20.0, (self.speed or 35.0) + rng.uniform(-8, 8))), 1)
            metres = self.speed / 3.6 * PERIOD
            self._advance(metres)
            litres = metres / 1000 * CONSUMPTION
            self.mileage = round(self.mileage + metres / 1000, 3)
            self.motorhours = round(self.motorhours + PERIOD / 3600, 4)
            self.consumed = round(self.consumed + litres, 3)
            self.fuel = round(max(0.0, self.fuel - litres / TANK * 100), 2)
            self.coolant = round(min(92.0, self.coolant + rng.uniform(2, 6)), 1)
            self.door = False
        else:
            self.speed = 0.0
            self.coolant = round(max(25.0, self.coolant - rng.uniform(1, 4)), 1)
            self.door = rng.random() < 0.2  # loading
        self.signal = max(20, min(100, self.signal + rng.choice((-5, 0, 0, 5))))
        self.braked = self.driving and before - self.speed >= HARSH_BRAKING

    def _advance(self, metres: float) -> None:
        self.along += metres
        while True:
            a, b = ROUTE[self.segment], ROUTE[(self.segment + 1) % len(ROUTE)]
            length = _distance(a, b)
            if self.along < length:
                return
            self.along -= length
            self.segment = (self.segment + 1) % len(ROUTE)

    def telemetry(self, rng: random.Random) -> dict[str, Any]:
        lat, lon, heading = self.point()
        ignition = self.driving
        rpm = round(750 + self.speed * 32 + rng.uniform(-40, 40)) if ignition else 0
        din = (1 if ignition else 0) | (2 if self.door else 0)
        return {
            "position": {
                "altitude": round(410 + rng.uniform(-3, 3), 1), "direction": heading,
                "hdop": round(rng.uniform(0.6, 1.3), 2), "latitude": round(lat, 6),
                "longitude": round(lon, 6), "satellites": rng.randint(9, 16),
                "speed": self.speed, "valid": True,
            },
            "engine.ignition.status": ignition,
            "movement.status": self.speed > 0,
            "vehicle.mileage": self.mileage,
            "engine.motorhours": self.motorhours,
            "can.engine.rpm": rpm,
            "can.vehicle.speed": self.speed,
            "can.engine.temperature": self.coolant,
            "fuel.level": self.fuel,
            "fuel.consumed": self.consumed,
            "external.powersource.voltage": round((14.1 if ignition else 12.6)
                                                  + rng.uniform(-0.15, 0.15), 2),
            "battery.voltage": round(4.1 + rng.uniform(-0.03, 0.03), 2),
            "din": din, "din.1": ignition, "din.2": self.door,
            "dout": 0, "dout.1": False,
            "towing.alarm.status": False, "crash.event": False, "alarm.event": False,
            "gnss.status": True,
            "gsm.signal.level": self.signal, "gsm.operator.code": OPERATOR,
            # an event: in the message of the step it happened in only, as trackers send it
            **({"harsh.braking.event": True} if self.braked else {}),
        }
