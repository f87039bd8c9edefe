"""`flespi-bridge demo`: two throwaway brokers, the simulator on one, the bridge between."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiomqtt
import orjson

from bridge import logs
from bridge.app.bridge import Bridge
from bridge.app.signals import stop_on_signals
from bridge.config import settings as config
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

DEMO_TOKEN = "demo-token-not-a-secret"


def _describe(state: dict[str, Any]) -> str:
    parts = []
    for key, fmt in (("battery", "battery {}%"), ("charging", "charging={}"),
                     ("locked", "locked={}"), ("ignition", "ignition={}"),
                     ("fuel_level", "fuel {}%"), ("mileage", "{} km"), ("signal", "signal {}%"),
                     ("latitude", "lat {}"), ("longitude", "lon {}"), ("speed", "{} km/h")):
        if key in state:
            parts.append(fmt.format(state[key]))
    return ", ".join(parts)


async def _watch(host: str, port: int, base: str) -> None:
    """Print what arrives on the local broker, as a user's subscriber would see it."""
    async with aiomqtt.Client(host, port, identifier="flespi-bridge-demo-watch") as client:
        # `+/state` also matches `<base>/bridge/state`
        await client.subscribe(f"{base}/+/state")
        await client.subscribe(f"{base}/+/availability")
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic.endswith("/state") and not topic.endswith("bridge/state"):
                try:
                    state = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                print(f"  {topic}: {_describe(state)}", flush=True)
            else:
                print(f"  {topic}: {payload.decode(errors='replace')}", flush=True)


def demo_settings(upstream: mosquitto.Broker, local: mosquitto.Broker) -> config.Settings:
    """The demo bridge's settings: its own throwaway brokers and token, whatever the
    environment says (`FLESPI_BRIDGE_*` variables and secrets directories are ignored, so a
    real flespi token exported in the shell never reaches the demo's brokers)."""
    return config.load(environment=False, overrides={
        "flespi": {"token": DEMO_TOKEN, "host": upstream.host, "port": upstream.port,
                   "tls": False, "client_id": "flespi-bridge-demo"},
        "local": {"host": local.host, "port": local.port},
        "metrics": {"port": 0},
        "commands": {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}},
    })


async def run(*, devices: int, rate: float, duration: float | None,
              fleet: str = "scooters") -> int:
    logs.setup("WARNING", "text", [DEMO_TOKEN])
    # Ctrl-C from the first moment on only sets `stop`: a KeyboardInterrupt raised inside the
    # bridge's start-up or shutdown would end in a traceback with the brokers half stopped.
    stop = asyncio.Event()
    stop_on_signals(stop)
    with (
        mosquitto.start(extra_config=mosquitto.FLESPI_LIKE) as upstream,
        mosquitto.start() as local,
    ):
        settings = demo_settings(upstream, local)
        sim = Simulator(upstream.host, upstream.port, devices=devices, kind=fleet)
        await sim.start()
        responder = Responder(sim)
        await responder.attach()
        bridge = Bridge(settings)
        await bridge.start()
        base = settings.local.base_topic
        print(f"simulated flespi broker: {upstream.address} ({devices} devices: {fleet}, "
              f"{rate} messages/s)")
        print(f"local broker:            {local.address}")
        if bridge.health is not None:
            print(f"metrics:                 http://127.0.0.1:{bridge.health.port}/metrics")
        print("watch the local side with:")
        print(f"  mosquitto_sub -h {local.host} -p {local.port} -t '{base}/#' -v")
        scooters = [d.id for d in sim.devices.values() if d.profile == "scooter"]
        if scooters:
            print("unlock a scooter with:")
            print(f"  mosquitto_pub -h {local.host} -p {local.port} -t '{base}/{scooters[0]}/set' "
                  """-m '{"lock": false, "transaction": "demo-1"}'""")
        print("Ctrl-C stops everything. Local broker receives:", flush=True)

        tasks = [
            asyncio.create_task(_watch(local.host, local.port, base)),
            asyncio.create_task(sim.run(rate)),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bridge.stop()
        await responder.close()
        await sim.stop()
        print("demo stopped", flush=True)
    return 0
