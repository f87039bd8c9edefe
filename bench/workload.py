"""The benchmark's input, encoded once, and what the local broker must show at the end.

Every workload is deterministic for a seed, so the expected final state of every device is
known without asking the bridge.

Ingest mix (per simulated device message, all retained, QoS 1, `timestamp` user property):
every parameter of the bridge's catalogue (`bridge.normalize.catalog.CATALOG`) with a value of its
type, the dotted sub-parameters flespi publishes beside a composite value (`position.latitude`,
...; only those the catalogue lists are mapped) and a few message fields flespi also keeps as
telemetry (`ident`, `timestamp`, ...) that the bridge does not map.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bench.loadgen import Stream
from bridge.mqtt import codec
from bridge.normalize import catalog

STATE_PREFIX = "flespi/state/gw/devices/"
FIRST_ID = 7_100_000  # workload device ids (far from the simulator's)
PRIMER_ID = 999  # a device used only to check that a contestant is connected
BASE_TS = 1_706_905_170.0  # flespi-like Unix seconds; increases per message
# Parameters flespi keeps in telemetry that the catalogue does not map.
UNMAPPED: dict[str, Any] = {
    "ident": "015136007100000",
    "channel.id": 1190401,
    "message.type": "H0",
    "server.timestamp": 0.0,
    "timestamp": 0.0,
}
# Realistic ranges for attributes the catalogue leaves open.
RANGES: dict[str, tuple[float, float]] = {
    "voltage": (3.3, 4.2),
    "external_voltage": (11.5, 14.4),
    "altitude": (390.0, 420.0),
    "hdop": (0.5, 2.0),
    "speed": (0.0, 30.0),
    "satellites": (3, 16),
    "latitude": (-17.75, -17.70),
    "longitude": (-63.20, -63.15),
}


def _attr_value(rng: random.Random, attr: catalog.Attribute) -> Any:
    lo, hi = RANGES.get(attr.name, (attr.minimum if attr.minimum is not None else 0.0,
                                     attr.maximum if attr.maximum is not None else 100.0))
    if attr.type == "bool":
        return rng.random() < 0.5
    if attr.type == "int":
        return rng.randint(int(lo), int(hi))
    if attr.type == "float":
        return round(rng.uniform(lo, hi), 6 if attr.name in ("latitude", "longitude") else 2)
    if attr.type == "str":
        return rng.choice(("H0", "H1", "H2"))
    return round(rng.uniform(lo, hi), 2)


@dataclass
class DeviceMessage:
    """One device message: flespi parameter -> value, and the attributes it sets."""

    params: dict[str, Any]
    attributes: dict[str, Any]


def device_message(rng: random.Random, params: Iterable[catalog.Parameter], *,
                   unmapped: bool = True) -> DeviceMessage:
    """Values for every listed parameter, consistent where two map to one attribute
    (`position.speed` and `position`'s `speed`)."""
    plist = list(params)
    attrs: dict[str, Any] = {}
    for p in plist:
        for attr in [p.attribute] if p.attribute else list(p.fields.values()):
            if attr.name not in attrs:
                attrs[attr.name] = _attr_value(rng, attr)
    out: dict[str, Any] = {}
    for p in plist:
        if p.attribute is not None:
            out[p.flespi] = attrs[p.attribute.name]
        else:
            obj = {key: attrs[a.name] for key, a in p.fields.items()}
            out[p.flespi] = obj
            if unmapped:  # flespi also publishes each field as a dotted parameter
                for key, value in obj.items():
                    out.setdefault(f"{p.flespi}.{key}", value)
    if unmapped:
        for name, value in UNMAPPED.items():
            out.setdefault(name, value)
    return DeviceMessage(out, attrs)


def _ts_property(ts: float) -> bytes:
    return codec.user_properties([("timestamp", f"{ts:.5f}")])


class StreamBuilder:
    """Encodes publications into one buffer with packet offsets (QoS 1 packet ids cycle)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._offsets = array("Q", [0])
        self._size = 0

    def add(self, packet: bytes) -> None:
        self._parts.append(packet)
        self._size += len(packet)
        self._offsets.append(self._size)

    def publish(self, topic: str, payload: bytes, ts: float | None, *, retain: bool = True,
                qos: int = 1) -> None:
        pid = len(self._parts) % 65535 + 1
        props = _ts_property(ts) if ts is not None else b""
        self.add(codec.publish5(topic, payload, mid=pid, qos=qos, retain=retain,
                                properties=props))

    @property
    def count(self) -> int:
        return len(self._parts)

    def build(self) -> Stream:
        return Stream(b"".join(self._parts), self._offsets)


def telemetry_topic(device_id: int, param: str) -> str:
    return f"{STATE_PREFIX}{device_id}/telemetry/{param}"


@dataclass
class Workload:
    stream: Stream
    expected: dict[int, dict[str, Any]]  # device id -> attributes its final state holds
    mapped: int  # publications of catalogue parameters
    params_per_message: int


def params_per_message() -> int:
    """Publications per device message: one per parameter the workload sends."""
    return len(device_message(random.Random(1), catalog.CATALOG).params)


def ingest(n_messages: int, devices: int, *, seed: int = 1) -> Workload:
    """`n_messages` device messages round-robin over `devices` devices, each fanned out
    into one publication per parameter, as flespi does."""
    rng = random.Random(seed)
    params = catalog.CATALOG
    builder = StreamBuilder()
    expected: dict[int, dict[str, Any]] = {}
    mapped_names = {p.flespi for p in params}
    mapped = per_message = 0
    for k in range(n_messages):
        dev = FIRST_ID + k % devices
        ts = BASE_TS + k * 0.001
        msg = device_message(rng, params)
        per_message = len(msg.params)
        for param, value in msg.params.items():
            if param in ("timestamp", "server.timestamp"):
                value = round(ts, 3)
            builder.publish(telemetry_topic(dev, param), orjson.dumps(value), ts)
            mapped += param in mapped_names
        expected.setdefault(dev, {}).update(msg.attributes)
    return Workload(builder.build(), expected, mapped, per_message)


def device_object(device_id: int, index: int) -> dict[str, Any]:
    """A flespi device object, as the simulator publishes it."""
    return {
        "id": device_id,
        "name": f"bench-{index:05d}",
        "cid": 1000001,
        "device_type_id": 1272,
        "protocol_id": 200,
        "configuration": {"ident": f"0151360{device_id:08d}", "settings_polling": "once"},
        "messages_ttl": 31536000,
        "media_ttl": 31536000,
    }


def startup(devices: int, parameters: int = 10, *, seed: int = 2) -> Workload:
    """The retained state flespi replays at start-up: per device its object, `name`,
    `connected`, and `parameters` catalogue parameters (no unmapped ones)."""
    rng = random.Random(seed)
    params = catalog.CATALOG[:parameters]
    builder = StreamBuilder()
    expected: dict[int, dict[str, Any]] = {}
    for i in range(devices):
        dev = FIRST_ID + i
        obj = device_object(dev, i)
        builder.publish(f"{STATE_PREFIX}{dev}", orjson.dumps(obj), None)
        builder.publish(f"{STATE_PREFIX}{dev}/name", orjson.dumps(obj["name"]), None)
        builder.publish(f"{STATE_PREFIX}{dev}/connected", b"true", None)
        ts = BASE_TS + i * 0.001
        msg = device_message(rng, params, unmapped=False)
        for param, value in msg.params.items():
            builder.publish(telemetry_topic(dev, param), orjson.dumps(value), ts)
        expected[dev] = msg.attributes
    return Workload(builder.build(), expected, devices * len(params), len(params))


# -- latency: one unique voltage per update ----------------------------------------------

VOLTAGE_PARAM = "battery.voltage"
VOLTAGE_BASE = 3.0
VOLTAGE_STEP = 1e-5  # 100,000 distinct values between 3 V and 4 V


def voltage_of(seq: int) -> float:
    return round(VOLTAGE_BASE + seq * VOLTAGE_STEP, 5)


def seq_of(voltage: float) -> int:
    return round((voltage - VOLTAGE_BASE) / VOLTAGE_STEP)


def latency(updates: int, devices: int) -> Stream:
    """`updates` publications of battery.voltage round-robin over `devices`; update i
    carries voltage_of(i), so its state on the local broker identifies it."""
    if updates > int(1 / VOLTAGE_STEP):
        raise ValueError("too many updates for unique voltages")
    builder = StreamBuilder()
    for i in range(updates):
        dev = FIRST_ID + i % devices
        ts = BASE_TS + i * 0.001
        builder.publish(telemetry_topic(dev, VOLTAGE_PARAM), orjson.dumps(voltage_of(i)), ts)
    return builder.build()


def primer(value: int) -> Stream:
    """One publication for the primer device (a contestant is ready once it shows)."""
    builder = StreamBuilder()
    builder.publish(telemetry_topic(PRIMER_ID, "battery.level"), str(value).encode(),
                    BASE_TS + value)
    return builder.build()


def matches(state: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    """Every expected attribute has its value (booleans must stay booleans)."""
    for key, want in expected.items():
        got = state.get(key, _MISSING)
        if got is _MISSING or got != want or (type(got) is bool) != (type(want) is bool):
            return False
    return True


_MISSING = object()
