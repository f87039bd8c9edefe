"""Home Assistant's `online` on `homeassistant/status` is open to any local client: a burst
coalesces into one full republish, republishes for `online` are at least
`homeassistant.republish_interval` apart, and an `online` that comes sooner is answered at
the interval's end, never dropped (Home Assistant restarting twice is still served)."""

from __future__ import annotations

import asyncio
import time

from support.helpers import BridgeFactory, Recorder, make_settings, wait_until

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

PREFIX = "homeassistant"
BASE = "flespi"
BRIDGE_CONFIG = f"{PREFIX}/device/{BASE}/flespi_bridge_{BASE}/config"
INTERVAL = 1.5


async def test_online_bursts_coalesce_and_republishes_are_rate_limited(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    settings = make_settings(upstream, local, homeassistant={
        "status_delay": 0.1, "republish_interval": INTERVAL})
    device_configs = [f"{PREFIX}/device/{BASE}/flespi_{d}/config" for d in sim.devices]
    async with Recorder(local, [f"{PREFIX}/device/{BASE}/+/config"]) as rec:
        bridge = await bridge_factory(settings)
        await asyncio.wait_for(bridge.loaded.wait(), 10)
        await rec.wait_for(lambda: all(t in rec.latest for t in device_configs),
                           what="every device announced")
        stamps: list[float] = []  # when each republish (the bridge's own config) arrived

        def republishes() -> int:
            seen = sum(m.topic == BRIDGE_CONFIG for m in rec.messages)
            stamps.extend([time.monotonic()] * (seen - start - len(stamps)))
            return len(stamps)

        start = sum(m.topic == BRIDGE_CONFIG for m in rec.messages)

        async def burst() -> None:
            for _ in range(50):
                await rec.publish(f"{PREFIX}/status", "online", qos=1)

        await burst()
        await rec.wait_for(lambda: republishes() >= 1, what="the first republish")
        # a second burst inside the interval: one more republish, at the interval's end
        await burst()
        await rec.wait_for(lambda: republishes() >= 2, timeout=INTERVAL + 10,
                           what="the republish deferred to the interval's end")
        assert stamps[1] - stamps[0] >= INTERVAL - 0.2, "republished before the interval"
        # each republish is complete: every device announced again with it
        await rec.wait_for(lambda: sum(m.topic in device_configs for m in rec.messages)
                           >= 3 * len(device_configs), what="every device announced again")
        # once the interval is over, a fresh online is answered after status_delay again
        await wait_until(lambda: time.monotonic() > stamps[1] + INTERVAL,
                         timeout=INTERVAL + 5, what="the interval's end")
        asked = time.monotonic()
        await rec.publish(f"{PREFIX}/status", "online", qos=1)
        await rec.wait_for(lambda: republishes() >= 3, what="a republish after the interval")
        assert stamps[2] - asked < INTERVAL
        assert republishes() == 3  # 101 onlines: three republishes
