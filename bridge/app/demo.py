"""`flespi-bridge demo`: two throwaway brokers, the simulator on one, the bridge between.

`demo --home-assistant HOST:PORT` publishes to the user's own broker instead of a throwaway
local one, so the simulated fleet appears in their own Home Assistant (lock, button and number
entities included), under its own base topic `DEMO_BASE` so it never mixes with a real
bridge's; `--clean` then clears every retained topic it published (`bridge.app.demo_clean`)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
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
DEMO_BASE = "flespi-demo"  # the base topic on a user's own broker


@dataclass(frozen=True)
class LocalBroker:
    """The broker the demo's bridge publishes to: throwaway, or the user's own."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    own: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client_args(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password}

    def cli_args(self) -> str:
        """mosquitto_sub/pub's options to reach it (the password left for the user to add)."""
        user = f" -u {self.username} -P '<password>'" if self.username else ""
        return f"-h {self.host} -p {self.port}{user}"


def _describe(state: dict[str, Any]) -> str:
    parts = []
    for key, fmt in (("battery", "battery {}%"), ("charging", "charging={}"),
                     ("locked", "locked={}"), ("ignition", "ignition={}"),
                     ("fuel_level", "fuel {}%"), ("mileage", "{} km"), ("signal", "signal {}%"),
                     ("latitude", "lat {}"), ("longitude", "lon {}"), ("speed", "{} km/h")):
        if key in state:
            parts.append(fmt.format(state[key]))
    return ", ".join(parts)


async def _watch(local: LocalBroker, base: str) -> None:
    """Print what arrives on the local broker, as a user's subscriber would see it."""
    async with aiomqtt.Client(local.host, local.port, identifier="flespi-bridge-demo-watch",
                              **local.client_args()) as client:
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


def demo_settings(upstream: mosquitto.Broker, local: mosquitto.Broker | LocalBroker
                  ) -> config.Settings:
    """The demo bridge's settings: its own throwaway brokers and token, whatever the
    environment says (`FLESPI_BRIDGE_*` variables and secrets directories are ignored, so a
    real flespi token exported in the shell never reaches the demo's brokers)."""
    return config.load(environment=False, overrides={
        "flespi": {"token": DEMO_TOKEN, "host": upstream.host, "port": upstream.port,
                   "tls": False, "client_id": "flespi-bridge-demo"},
        "local": own_local(local) if isinstance(local, LocalBroker) and local.own
        else {"host": local.host, "port": local.port},
        "metrics": {"port": 0},
        "commands": {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}},
    })


def own_local(local: LocalBroker) -> dict[str, Any]:
    """The `[local]` settings for a user's own broker: the demo's base topic and client id,
    so that neither a real bridge's topics nor its session are touched."""
    values: dict[str, Any] = {"host": local.host, "port": local.port, "base_topic": DEMO_BASE,
                              "client_id": "flespi-bridge-demo"}
    if local.username:
        values["username"] = local.username
    if local.password:
        values["password"] = local.password
    return values


async def run(*, devices: int, rate: float, duration: float | None,
              fleet: str = "scooters", own: LocalBroker | None = None) -> int:
    logs.setup("WARNING", "text", [DEMO_TOKEN, (own.password or "") if own else ""])
    # Ctrl-C from the first moment on only sets `stop`: a KeyboardInterrupt raised inside the
    # bridge's start-up or shutdown would end in a traceback with the brokers half stopped.
    stop = asyncio.Event()
    stop_on_signals(stop)
    with contextlib.ExitStack() as brokers:
        upstream = brokers.enter_context(mosquitto.start(extra_config=mosquitto.FLESPI_LIKE))
        if own is None:
            throwaway = brokers.enter_context(mosquitto.start())
            local = LocalBroker(throwaway.host, throwaway.port)
        else:
            local = own
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
        print(f"local broker:            {local.address}"
              + (f" (yours; base topic {base})" if local.own else ""))
        if bridge.health is not None:
            print(f"metrics:                 http://127.0.0.1:{bridge.health.port}/metrics")
        print("watch the local side with:")
        print(f"  mosquitto_sub {local.cli_args()} -t '{base}/#' -v")
        scooters = [d.id for d in sim.devices.values() if d.profile == "scooter"]
        if scooters:
            print("unlock a scooter with:")
            print(f"  mosquitto_pub {local.cli_args()} -t '{base}/{scooters[0]}/set' "
                  """-m '{"lock": false, "transaction": "demo-1"}'""")
        if local.own:
            names = ", ".join(d.name for d in list(sim.devices.values())[:3])
            print(f"In Home Assistant: Settings > Devices & services > MQTT: {names} ...")
            print(f"Remove them again with: flespi-bridge demo --home-assistant "
                  f"{local.address} --clean")
        print("Ctrl-C stops everything. Local broker receives:", flush=True)

        tasks = [
            asyncio.create_task(_watch(local, base)),
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
