"""A simulated van's message history, from the van's motion model (`bridge.sim.van`): its
round of Santa Cruz, its tracker's flat message keys (`engine.ignition.status`,
`vehicle.mileage`, `fuel.level`, ...), ignition on while driving and off while parked.

The van works from 12:00 to 22:00 UTC (08:00-18:00 in Santa Cruz) since `EPOCH`; each working
hour it makes 2-4 drives of `DRIVE` seconds in all, between parks with the ignition off, and
covers exactly `HOUR_KM`; the rest of the day it stays parked. So the state at the top of any
hour is a closed-form function of the working hours before it (mileage, engine hours, fuel
used, the place on the round), and any hour is computed on demand, deterministic per device
and hour: any range, any paging gives the same answer, the odometer never jumps, and the
positions follow the odometer along the round. Fuel drops with the distance; every
`REFUEL_EVERY` working hours the van refuels during its first park. Nothing is stored.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bridge.sim import van as model
from bridge.sim.fleet import Fleet, SimDevice

SLOT = 3600.0
EPOCH = 1704067200.0  # 2024-01-01T00:00:00Z: the vans' first day of work
WORK_HOURS = range(12, 22)  # UTC
DRIVE = 2400.0  # seconds of driving per working hour
HOUR_KM = 32.0  # km driven per working hour (4.4 % of the tank: no rounding ties)
MIN_DRIVE, MIN_PARK = 300.0, 60.0  # seconds
REFUEL_EVERY = 16  # working hours between refuels
FULL = 95.0  # percent after refuelling
PER_HOUR_FUEL = HOUR_KM * model.CONSUMPTION / model.TANK * 100  # percent used per working hour


@dataclass(frozen=True)
class Phase:
    driving: bool
    steps: int


@dataclass(frozen=True)
class Start:
    """The van at the top of an hour."""

    mileage: float  # km
    motorhours: float
    consumed: float  # litres
    fuel: float  # percent
    refuel: bool  # refuels during this hour's first park


def working_hours_before(slot: int) -> int:
    """Working hours from `EPOCH` to the top of hour `slot`."""
    since = slot - math.floor(EPOCH / SLOT)
    days, hour = divmod(since, 24)
    return days * len(WORK_HOURS) + sum(1 for h in WORK_HOURS if h < hour)


def is_working(slot: int) -> bool:
    return slot * SLOT >= EPOCH and slot % 24 in WORK_HOURS


def start(dev: SimDevice, slot: int) -> Start:
    base = random.Random(f"van:{dev.id}")
    mileage = base.uniform(20_000, 80_000)
    motorhours = base.uniform(800, 3_000)
    consumed = base.uniform(2e3, 9e3)
    j = working_hours_before(slot)
    used = (j - 1) % REFUEL_EVERY + 1 if j > 0 else 0  # hours since the last refuel
    return Start(mileage + j * HOUR_KM, motorhours + j * DRIVE / 3600,
                 consumed + j * HOUR_KM * model.CONSUMPTION, FULL - used * PER_HOUR_FUEL,
                 refuel=is_working(slot) and used == REFUEL_EVERY)


def _split(total: int, parts: int, least: int, rng: random.Random) -> list[int]:
    """`total` steps in `parts` random parts of at least `least` each."""
    weights = [rng.random() + 0.2 for _ in range(parts)]
    spare = total - parts * least
    sizes = [least + math.floor(spare * w / sum(weights)) for w in weights]
    sizes[-1] += total - sum(sizes)
    return sizes


def schedule(rng: random.Random, period: float) -> list[Phase]:
    """A working hour: park, drive, park, ..., drive, park."""
    steps = round(SLOT / period)
    drive_steps = round(DRIVE / period)
    drives = rng.randint(2, 4)
    drive = _split(drive_steps, drives, max(1, round(MIN_DRIVE / period)), rng)
    park = _split(steps - drive_steps, drives + 1, max(1, round(MIN_PARK / period)), rng)
    phases = [Phase(False, park[0])]
    for d, p in zip(drive, park[1:], strict=True):
        phases += [Phase(True, d), Phase(False, p)]
    return phases


def _speeds(phases: list[Phase], rng: random.Random, period: float) -> list[list[float]]:
    """Each drive's speeds (km/h, one per step): the van model's random walk between 20
    and 70 km/h, scaled so that the hour covers exactly `HOUR_KM`."""
    jitter = 8 * min(1.0, period / model.PERIOD)
    drives: list[list[float]] = []
    for phase in phases:
        if phase.driving:
            speed, walk = 35.0, []
            for _ in range(phase.steps):
                speed = min(70.0, max(20.0, speed + rng.uniform(-jitter, jitter)))
                walk.append(speed)
            drives.append(walk)
    metres = sum(v for walk in drives for v in walk) / 3.6 * period
    scale = HOUR_KM * 1000 / metres
    return [[v * scale for v in walk] for walk in drives]


def slot_messages(fleet: Fleet, dev: SimDevice, slot: int, period: float
                  ) -> Iterator[dict[str, Any]]:
    """The van's messages of hour `slot` (before `EPOCH`: none, it was not yet at work)."""
    if slot * SLOT < EPOCH:
        return
    rng = random.Random(f"van:{dev.id}:{slot}")
    at = start(dev, slot)
    top = slot * SLOT
    van = model.Van(segment=0, along=0.0, driving=False, steps_left=0,
                    mileage=at.mileage, motorhours=at.motorhours, fuel=at.fuel,
                    consumed=at.consumed, coolant=25.0, signal=80)
    steps = round(SLOT / period)
    phases = schedule(rng, period) if is_working(slot) else [Phase(False, steps)]
    drives = iter(_speeds(phases, rng, period) if is_working(slot) else [])
    litres_per_metre = model.CONSUMPTION / 1000
    step, coolant_from, phase_start = 0, 25.0, 0
    for index, phase in enumerate(phases):
        speeds = next(drives) if phase.driving else []
        refuel_at = phase.steps // 2 if at.refuel and index == 0 else -1
        coolant_from, phase_start = van.coolant, step
        for k in range(phase.steps):
            # the message at the start of each step: where the van is, what it does next
            elapsed = (step - phase_start) * period
            van.place(van.mileage * 1000)
            van.driving = phase.driving
            if phase.driving:
                van.speed = round(speeds[k], 1)
                van.coolant = round(92 - (92 - coolant_from) * math.exp(-elapsed / 300), 1)
                van.door = False
            else:
                van.speed = 0.0
                van.coolant = round(25 + (coolant_from - 25) * math.exp(-elapsed / 600), 1)
                van.door = rng.random() < 0.2  # loading
                if k == refuel_at:
                    van.fuel = FULL
            van.signal = max(20, min(100, van.signal + rng.choice((-5, 0, 0, 5))))
            values = van.telemetry(rng)
            position = values.pop("position")
            values.update({f"position.{key}": value for key, value in position.items()})
            values["vehicle.mileage"] = round(van.mileage, 3)
            values["engine.motorhours"] = round(van.motorhours, 4)
            values["fuel.consumed"] = round(van.consumed, 3)
            values["fuel.level"] = round(van.fuel, 2)
            yield fleet.message(dev, values, top + step * period)
            if phase.driving:  # then it drives this step at the speed reported
                metres = speeds[k] / 3.6 * period
                van.mileage += metres / 1000
                van.motorhours += period / 3600
                van.consumed += metres * litres_per_metre
                van.fuel = max(0.0, van.fuel - metres * litres_per_metre / model.TANK * 100)
            step += 1
