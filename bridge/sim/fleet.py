"""The simulated fleet as plain data: e-scooters like the one in the reference documents,
delivery vans (`bridge.sim.van`), or both (`FLEETS`).

Pure and deterministic for a given seed, so tests can compare what the bridge publishes
with what the fleet says.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from bridge.sim import van as van_model

FLEETS = ("scooters", "vans", "mixed")
DEVICE_TYPE_ID = 1272  # the "Omni" e-scooter of the reference documents
PROTOCOL_ID = 200
FIRST_ID = 5537000
HOME = (-17.72436, -63.171508)  # Santa Cruz de la Sierra, where the seed scooters ride
# The command profile of this device type, as config.example.toml ships it (the demo uses it).
SCOOTER_PROFILE: dict[str, dict[str, Any]] = {
    "lock": {"component": "lock", "command": "setting.r0.set",
             "properties": {"key_time": 1, "user_id": ""}, "value_property": "lock",
             "payload_lock": 1, "payload_unlock": 0, "state_attribute": "locked"},
    "restart": {"component": "button", "command": "setting.s1.set",
                "properties": {"event_code": 2}, "label": "Restart"},
    "upload_interval": {"component": "number", "command": "setting.d1.set",
                        "value_property": "upload_interval", "min": 5, "max": 3600,
                        "step": 1, "unit": "s", "label": "Report interval",
                        "setting": "upload_interval"},
}


@dataclass(frozen=True)
class SimSetting:
    """A device setting of a simulated device type: flespi publishes its current value
    retained on `flespi/state/gw/devices/{id}/settings/{name}` as an object of the
    setting's properties, and `command` (with the new value in `property`) changes it."""

    command: str
    property: str
    initial: Any

    def value(self, current: Any) -> dict[str, Any]:
        return {self.property: current}


# What flespi's REST API says of the simulated device types and protocols
# (`gw/channel-protocols/all/device-types/{id}`, `gw/channel-protocols/{id}`); a profile added
# to the simulator adds its own entries.
DEVICE_TYPES: dict[int, dict[str, Any]] = {
    DEVICE_TYPE_ID: {"id": DEVICE_TYPE_ID, "name": "omni-scooter", "title": "OMNI e-scooter",
                     "protocol_id": PROTOCOL_ID, "protocol_name": "omni"},
    van_model.DEVICE_TYPE_ID: {"id": van_model.DEVICE_TYPE_ID, "name": "simcan-van",
                               "title": "CAN van tracker", "protocol_id": van_model.PROTOCOL_ID,
                               "protocol_name": "simcan"},
}
PROTOCOLS: dict[int, dict[str, Any]] = {
    PROTOCOL_ID: {"id": PROTOCOL_ID, "name": "omni", "title": "OMNI"},
    van_model.PROTOCOL_ID: {"id": van_model.PROTOCOL_ID, "name": "simcan",
                            "title": "Simulated CAN tracker"},
}
# device type id -> setting name -> setting: each simulated device type's settings (a
# profile added to the simulator adds its own entry here)
SETTINGS: dict[int, dict[str, SimSetting]] = {
    DEVICE_TYPE_ID: {"upload_interval": SimSetting("setting.d1.set", "upload_interval", 30)},
    van_model.DEVICE_TYPE_ID: {name: SimSetting(f"setting.{name}.set", name, initial)
                               for name, initial in van_model.SETTINGS.items()},
}


@dataclass
class SimDevice:
    id: int
    name: str
    ident: str
    device_type_id: int = DEVICE_TYPE_ID
    protocol_id: int = PROTOCOL_ID
    connected: bool = True
    # flespi parameter name -> (value, timestamp), as flespi keeps telemetry
    telemetry: dict[str, tuple[Any, float]] = field(default_factory=dict)
    # setting name -> its current value object, as flespi publishes it (settings/{name})
    settings: dict[str, Any] = field(default_factory=dict)
    profile: str = "scooter"  # scooter | van

    def __post_init__(self) -> None:
        for name, setting in SETTINGS.get(self.device_type_id, {}).items():
            self.settings.setdefault(name, setting.value(setting.initial))

    def device_object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "cid": 1000001,
            "device_type_id": self.device_type_id,
            "protocol_id": self.protocol_id,
            "configuration": {"ident": self.ident, "settings_polling": "once"},
            "messages_ttl": 31536000,
            "media_ttl": 31536000,
        }

    @property
    def connection_id(self) -> str:
        return str(3492206331500000 + self.id)

    def connection(self) -> dict[str, Any]:
        """The device's TCP connection as flespi shows it on `connections/{id}`."""
        return {
            "channel_id": 1190401, "device_id": self.id, "established": 1706877098.857462,
            "id": int(self.connection_id), "ident": self.ident, "meta": None,
            "secondary": False, "transport": "tcp",
            "source": f"198.51.100.{self.id % 250 + 1}:{40000 + self.id % 9999}",
        }

    def value(self, param: str) -> Any:
        return self.telemetry[param][0]


class Fleet:
    def __init__(self, size: int, *, seed: int = 0, first_id: int = FIRST_ID,
                 kind: str = "scooters") -> None:
        """`kind`: scooters, vans, or mixed (every other device a van)."""
        if kind not in FLEETS:
            raise ValueError(f"unknown fleet {kind!r} (one of {', '.join(FLEETS)})")
        self.rng = random.Random(seed)
        self.devices: dict[int, SimDevice] = {}
        self.vans: dict[int, van_model.Van] = {}
        counts = {"scooter": 0, "van": 0}
        for i in range(size):
            dev_id = first_id + i
            is_van = kind == "vans" or (kind == "mixed" and i % 2 == 1)
            profile = "van" if is_van else "scooter"
            counts[profile] += 1
            if is_van:
                dev = SimDevice(dev_id, f"van-{counts[profile]:03d}", f"35262533{dev_id:07d}",
                                device_type_id=van_model.DEVICE_TYPE_ID,
                                protocol_id=van_model.PROTOCOL_ID,
                                profile="van")
                self.devices[dev_id] = dev
                self.vans[dev_id] = van_model.Van.start(self.rng)
                self.apply(dev, self.vans[dev_id].telemetry(self.rng), time.time())
            else:
                dev = SimDevice(dev_id, f"scooter-{counts[profile]:03d}",
                                f"01513600{dev_id:07d}")
                self.devices[dev_id] = dev
                self._initial(dev)

    def _initial(self, dev: SimDevice) -> None:
        rng = self.rng
        lat = HOME[0] + rng.uniform(-0.02, 0.02)
        lon = HOME[1] + rng.uniform(-0.02, 0.02)
        level = rng.randint(40, 100)
        self.apply(dev, {
            "battery.level": level,
            "battery.voltage": _voltage(level),
            "battery.charging.status": False,
            "gsm.signal.level": rng.choice(range(50, 101, 5)),
            "lock.status": True,
            "position": _position(lat, lon, rng.uniform(395, 420), rng.randint(6, 14),
                                  rng.uniform(0.6, 1.4), 0.0, 0),
            "message.type": "H0",
        }, time.time())

    def apply(self, dev: SimDevice, values: dict[str, Any], ts: float) -> dict[str, Any]:
        """Record a device message; returns every telemetry parameter it updates.

        Like flespi, a `position` object also updates the dotted `position.*` parameters.
        """
        updates = dict(values)
        pos = values.get("position")
        if isinstance(pos, dict):
            for key, val in pos.items():
                updates[f"position.{key}"] = val
        for param, val in updates.items():
            dev.telemetry[param] = (val, ts)
        return updates

    def step(self, dev: SimDevice, ts: float | None = None) -> dict[str, Any]:
        """One new device message: a scooter rides (if unlocked) and its battery moves; a
        van drives its round or stays parked (`bridge.sim.van`)."""
        rng = self.rng
        ts = time.time() if ts is None else ts
        van = self.vans.get(dev.id)
        if van is not None:
            van.step(rng)
            return self.apply(dev, van.telemetry(rng), ts)
        level = dev.value("battery.level")
        charging = dev.value("battery.charging.status")
        if charging:
            level = min(100, level + rng.randint(1, 3))
            charging = level < 100
        else:
            level = max(0, level - rng.choice((0, 1, 1, 2)))
            charging = level <= 10
        pos = dict(dev.value("position"))
        moving = not dev.value("lock.status")
        speed = round(rng.uniform(8, 25), 1) if moving else 0.0
        if moving:
            pos["latitude"] = round(pos["latitude"] + rng.uniform(-4e-4, 4e-4), 6)
            pos["longitude"] = round(pos["longitude"] + rng.uniform(-4e-4, 4e-4), 6)
        pos["satellites"] = max(3, min(16, pos["satellites"] + rng.choice((-1, 0, 1))))
        pos["speed"] = speed
        pos["direction"] = rng.randint(0, 359) if moving else pos.get("direction", 0)
        values = {
            "battery.level": level,
            "battery.voltage": _voltage(level),
            "battery.charging.status": charging,
            "gsm.signal.level": rng.choice(range(50, 101, 5)),
            "position": pos,
            "message.type": "H0",
        }
        return self.apply(dev, values, ts)

    def message(self, dev: SimDevice, values: dict[str, Any], ts: float) -> dict[str, Any]:
        """The full flespi message for `flespi/message/gw/devices/{id}` (flat, dotted keys)."""
        msg: dict[str, Any] = {k: v for k, v in values.items() if not isinstance(v, dict)}
        msg.update({
            "device.id": dev.id,
            "device.name": dev.name,
            "device.type.id": dev.device_type_id,
            "ident": dev.ident,
            "protocol.id": dev.protocol_id,
            "channel.id": 1190401,
            "server.timestamp": ts,
            "timestamp": ts,
        })
        if dev.profile == "scooter":
            msg["vendor.code"] = "OM"
        return dict(sorted(msg.items()))


def _voltage(level: int) -> float:
    return round(3.3 + 0.009 * level, 2)


def _position(lat: float, lon: float, alt: float, sats: int, hdop: float, speed: float,
              direction: int) -> dict[str, Any]:
    return {
        "altitude": round(alt, 1),
        "direction": direction,
        "hdop": round(hdop, 2),
        "latitude": round(lat, 6),
        "longitude": round(lon, 6),
        "satellites": sats,
        "speed": speed,
        "valid": True,
    }
