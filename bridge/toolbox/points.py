"""Track points from flespi's flat messages. Pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

IGNITION = "engine.ignition.status"
POSITION_FIELDS = ("timestamp", "position.latitude", "position.longitude",
                   "position.altitude", "position.speed", "position.valid")


@dataclass(frozen=True, slots=True)
class Point:
    ts: float
    lat: float
    lon: float
    alt: float | None = None
    speed: float | None = None  # km/h as the device reports it
    ignition: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def point(message: Any, params: tuple[str, ...] = (), ignition: str = IGNITION
          ) -> Point | None:
    """The message's position, or None when it has no valid one (flespi's
    `position.valid` false, coordinates missing or out of range)."""
    if not isinstance(message, dict) or message.get("position.valid") is False:
        return None
    ts = _number(message.get("timestamp"))
    lat = _number(message.get("position.latitude"))
    lon = _number(message.get("position.longitude"))
    if ts is None or lat is None or lon is None or not (-90 <= lat <= 90) \
            or not (-180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    speed = _number(message.get("position.speed"))
    ign = message.get(ignition)
    return Point(
        ts, lat, lon, _number(message.get("position.altitude")),
        None if speed is None or speed < 0 else speed,
        ign if isinstance(ign, bool) else (bool(ign) if ign in (0, 1) else None),
        {name: message[name] for name in params if name in message},
    )


def fields(params: tuple[str, ...], ignition: str = IGNITION) -> str:
    """flespi's `fields` selector for the messages a track needs."""
    return ",".join(dict.fromkeys((*POSITION_FIELDS, ignition, *params)))
