"""Fixtures: real Mosquitto brokers on free loopback ports, the simulator, the bridge, and a
recording subscriber on the local broker that tests wait on (conditions, never sleeps).

The folders say what a test needs, and mark it so (`pytest -m unit`, `-m integration`, ...):
`unit/<package>/test_<module>.py` (one module of `bridge/`, no broker), `integration/`
(real Mosquitto brokers and the simulator), `system/` (a real Home Assistant, soak, hostile
input, the documented promises end to end), `deploy/` (chart, Dockerfile, image, add-on,
package, monitoring rules)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.helpers import BridgeFactory, BridgeProcess, Brokers, Procs

from bridge.app.bridge import Bridge
from bridge.config import settings as config
from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.responder import Responder

FOLDERS = ("unit", "integration", "system", "deploy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder."""
    root = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(root).parts[0]
        if folder in FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture
def brokers() -> Iterator[Brokers]:
    """A factory of brokers, all stopped (by PID) at the end of the test."""
    started: list[mosquitto.Broker] = []

    def start(**kwargs: Any) -> mosquitto.Broker:
        broker = mosquitto.start(**kwargs)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.__exit__()


@pytest.fixture
def upstream(brokers: Brokers) -> mosquitto.Broker:
    """The simulated flespi broker."""
    return brokers(extra_config=mosquitto.FLESPI_LIKE)


@pytest.fixture
def local(brokers: Brokers) -> mosquitto.Broker:
    return brokers()


@pytest.fixture
async def sim(upstream: mosquitto.Broker) -> AsyncIterator[Simulator]:
    async with Simulator(upstream.host, upstream.port, devices=3, seed=7) as simulator:
        yield simulator


@pytest.fixture
async def responder(sim: Simulator) -> AsyncIterator[Responder]:
    """The simulator's REST-over-MQTT responder (commands, device type look-ups)."""
    r = Responder(sim)
    await r.attach()
    yield r
    await r.close()


@pytest.fixture
async def bridge_factory() -> AsyncIterator[BridgeFactory]:
    started: list[Bridge] = []

    async def start(settings: config.Settings) -> Bridge:
        bridge = Bridge(settings)
        await bridge.start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        await bridge.stop()




@pytest.fixture
def procs() -> Iterator[Procs]:
    """Tracks bridge child processes; each is killed (by PID) at the end of the test."""
    started: list[BridgeProcess] = []

    def track(proc: BridgeProcess) -> BridgeProcess:
        started.append(proc)
        return proc

    yield track
    for proc in started:
        proc.kill()
