"""Soak: a steady simulated fleet for a while, with both brokers restarted at random
moments; afterwards the local state must equal the simulator's final state for every device.

CI runs the short form (FLESPI_BRIDGE_SOAK_SECONDS, default 20 s); for minutes of it:
    FLESPI_BRIDGE_SOAK_SECONDS=300 python -m pytest -m soak
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest
from support.helpers import (
    BridgeFactory,
    Brokers,
    Recorder,
    expected_state,
    make_settings,
    wait_until,
)

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

BASE = "flespi"
SECONDS = float(os.environ.get("FLESPI_BRIDGE_SOAK_SECONDS", "20"))


@pytest.mark.soak
@pytest.mark.timeout(SECONDS * 3 + 120)
async def test_soak_with_broker_restarts(brokers: Brokers, bridge_factory: BridgeFactory) -> None:
    rng = random.Random(int(os.environ.get("FLESPI_BRIDGE_SOAK_SEED", "7")))
    # The simulated flespi persists sessions and retained state across its restarts, as
    # flespi does; the local broker forgets everything each time.
    upstream = brokers(extra_config=mosquitto.FLESPI_LIKE, persistence=True)
    local = brokers()
    sim = Simulator(upstream.host, upstream.port, devices=20, seed=rng.randrange(1000))
    await sim.start()
    bridge = await bridge_factory(make_settings(upstream, local, flespi={"messages": False},
                                                reconnect={"min_delay": 0.05,
                                                           "max_delay": 1.0}))
    await asyncio.wait_for(bridge.loaded.wait(), 20)
    load = asyncio.create_task(sim.run(rate=100, duration=SECONDS))
    restarts = {"upstream": 0, "local": 0}
    try:
        while not load.done():
            await asyncio.wait({load}, timeout=rng.uniform(1.0, 4.0))  # a random moment
            if load.done():
                break
            if rng.random() < 0.5:
                upstream.stop()  # graceful: flespi does not lose what it accepted
                await asyncio.wait({load}, timeout=rng.uniform(0.1, 1.0))
                upstream.start()
                restarts["upstream"] += 1
            else:
                local.kill()  # abrupt, and nothing retained survives
                await asyncio.wait({load}, timeout=rng.uniform(0.1, 1.0))
                local.start()
                restarts["local"] += 1
        sent = await load
        await sim.flush(timeout=60)
    finally:
        if not load.done():
            load.cancel()
    assert sent > SECONDS * 50  # the load really ran
    assert sum(restarts.values()) >= 2
    await wait_until(bridge.ready, timeout=30, what="bridge ready after the last restart")
    async with Recorder(local, [f"{BASE}/+/state"]) as rec:
        await rec.wait_for(
            lambda: all(rec.state(BASE, d) == expected_state(sim, d) for d in sim.devices),
            timeout=60, what="local state equal to the simulator's final state")
    await sim.stop()
