"""The simulator's I/O: publishes a `Fleet` to a real MQTT broker exactly as flespi would.

Per device: the retained device object and its `name` and `connected` properties, retained
per-parameter telemetry with the MQTT 5 `timestamp` user property, its retained settings
(`settings/{name}`), and each full message on `flespi/message/gw/devices/{id}`. All at
QoS 1, so a persistent session that is away keeps what it missed, as on flespi.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import orjson
from gmqtt import Client as GmqttClient
from gmqtt.mqtt.constants import MQTTv50

from bridge.flespi.topics import MESSAGE_PREFIX, STATE_PREFIX
from bridge.sim.fleet import Fleet, SimDevice

log = logging.getLogger(__name__)

# Outbound QoS 1 publications allowed in flight before the simulator waits for acks.
WINDOW = 2000


def _ts(ts: float) -> list[tuple[str, str]]:
    return [("timestamp", repr(ts))]


class Simulator:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        devices: int = 3,
        seed: int = 0,
        messages: bool = True,
        kind: str = "scooters",
    ) -> None:
        self.host, self.port = host, port
        self.fleet = Fleet(devices, seed=seed, kind=kind)
        self.messages = messages
        self.published = 0
        # A persistent session: across a broker restart gmqtt resends what the broker had
        # not acknowledged (without a session it would discard it, as MQTT 5 requires).
        self._client = GmqttClient(f"flespi-sim-{uuid.uuid4().hex[:8]}", clean_session=False,
                                   session_expiry_interval=3600,
                                   logger=logging.getLogger("bridge.sim.gmqtt"))
        # gmqtt reconnects by itself and resends unacknowledged QoS 1 publications
        self._client.reconnect_delay = 0.2
        self._responder: Any = None

    @property
    def devices(self) -> dict[int, SimDevice]:
        return self.fleet.devices

    async def connect(self) -> None:
        await self._client.connect(self.host, self.port, version=MQTTv50)

    async def start(self) -> None:
        """Connect and publish the whole fleet's retained state."""
        await self.connect()
        for dev in self.devices.values():
            await self.publish_device(dev)
        await self.flush()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush(timeout=5)
        await self._client.disconnect()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def flush(self, timeout: float = 30) -> None:
        """Wait until the broker has acknowledged every publication."""
        await asyncio.wait_for(self._client._persistent_storage.wait_empty(), timeout)

    async def _publish(self, topic: str, payload: Any, *, retain: bool = True,
                       ts: float | None = None) -> None:
        if len(self._client._persistent_storage._messages) >= WINDOW:
            await self.flush()
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        props: dict[str, Any] = {} if ts is None else {"user_property": _ts(ts)}
        try:
            self._client.publish(topic, data, qos=1, retain=retain, **props)
        except OverflowError:  # the broker's receive maximum is below WINDOW: wait for acks
            await self.flush()
            self._client.publish(topic, data, qos=1, retain=retain, **props)
        self.published += 1

    async def publish_device(self, dev: SimDevice) -> None:
        base = f"{STATE_PREFIX}{dev.id}"
        await self._publish(base, dev.device_object())
        await self._publish(f"{base}/name", dev.name)
        await self._publish(f"{base}/connected", dev.connected)
        if dev.connected:
            await self._publish(f"{base}/connections/{dev.connection_id}", dev.connection())
        for param, (value, ts) in dev.telemetry.items():
            await self._publish(f"{base}/telemetry/{param}", value, ts=ts)
        for name, setting in dev.settings.items():
            await self._publish(f"{base}/settings/{name}", setting)

    async def set_setting(self, device_id: int, name: str, value: Any) -> None:
        """A device setting's new current value (a command changed it, or a test)."""
        dev = self.devices[device_id]
        dev.settings[name] = value
        await self._publish(f"{STATE_PREFIX}{device_id}/settings/{name}", value)

    async def publish_values(self, dev: SimDevice, values: dict[str, Any], ts: float) -> None:
        """Publish one device message: one retained publication per parameter, then the
        full message."""
        base = f"{STATE_PREFIX}{dev.id}/telemetry/"
        for param, value in values.items():
            await self._publish(base + param, value, ts=ts)
        if self.messages:
            await self._publish(f"{MESSAGE_PREFIX}{dev.id}",
                                self.fleet.message(dev, values, ts), retain=False)

    async def step(self, dev: SimDevice) -> dict[str, Any]:
        """The device sends a new message."""
        ts = time.time()
        values = self.fleet.step(dev, ts)
        await self.publish_values(dev, values, ts)
        return values

    async def set_values(self, device_id: int, values: dict[str, Any]) -> None:
        """Publish chosen telemetry values for a device (tests use this)."""
        dev = self.devices[device_id]
        ts = time.time()
        await self.publish_values(dev, self.fleet.apply(dev, values, ts), ts)

    async def set_connected(self, device_id: int, connected: bool) -> None:
        dev = self.devices[device_id]
        dev.connected = connected
        await self._publish(f"{STATE_PREFIX}{device_id}/connected", connected)
        # flespi removes a closed connection's retained object
        await self._publish(f"{STATE_PREFIX}{device_id}/connections/{dev.connection_id}",
                            dev.connection() if connected else b"")

    async def rename(self, device_id: int, name: str) -> None:
        dev = self.devices[device_id]
        dev.name = name
        await self._publish(f"{STATE_PREFIX}{device_id}", dev.device_object())
        await self._publish(f"{STATE_PREFIX}{device_id}/name", name)

    async def delete(self, device_id: int) -> None:
        """Delete the device as flespi does: its retained topics are cleared."""
        dev = self.devices.pop(device_id)
        base = f"{STATE_PREFIX}{device_id}"
        for param in dev.telemetry:
            await self._publish(f"{base}/telemetry/{param}", b"")
        for name in dev.settings:
            await self._publish(f"{base}/settings/{name}", b"")
        for leaf in (f"/connections/{dev.connection_id}", "/name", "/connected", ""):
            await self._publish(base + leaf, b"")

    async def run(self, rate: float, duration: float | None = None) -> int:
        """Send device messages round-robin at `rate` messages per second; returns the count."""
        devices = list(self.devices.values())
        if not devices or rate <= 0:
            return 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while duration is None or loop.time() - start < duration:
            await self.step(devices[sent % len(devices)])
            sent += 1
            delay = start + sent / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        return sent
