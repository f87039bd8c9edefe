"""The newcomer's path into their own Home Assistant (the project's pinned one): `demo
--home-assistant HOST:PORT` against the broker Home Assistant's MQTT integration uses, the
scooters' lock, button and number entities appear, unlocking from Home Assistant reaches the
simulated scooter, and `--clean` removes the devices again."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.helpers import PYTHON, bridge_env, poll
from support.homeassistant_harness import (
    HomeAssistant,
    add_mqtt,
    ensure_venv,
    onboard,
    running,
    wait_api,
)

from bridge.sim import brokers as mosquitto

# Home Assistant's start-up counts toward the timeout.
pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(900)]
COMMANDABLE = ("lock", "button", "number")


@pytest.fixture
def homeassistant(tmp_path: Path) -> Iterator[HomeAssistant]:
    with running(ensure_venv(), tmp_path / "ha") as ha:
        yield ha


async def demo_states(ha: HomeAssistant) -> list[dict[str, Any]]:
    """Every entity of the demo's scooters Home Assistant has (not removed)."""
    async with httpx.AsyncClient(base_url=ha.url, headers=ha.headers(), timeout=30) as http:
        response = await http.get("/api/states")
    response.raise_for_status()
    return [s for s in response.json()
            if "scooter-00" in str(s.get("attributes", {}).get("friendly_name", ""))]


async def test_the_demo_in_your_own_home_assistant_and_gone_again(
        homeassistant: HomeAssistant, local: mosquitto.Broker) -> None:
    ha = homeassistant
    ha.start()
    await wait_api(ha)
    await onboard(ha)
    await add_mqtt(ha, local.host, local.port)

    demo = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "bridge", "demo", "--home-assistant", local.address, "--devices", "2",
        env=bridge_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        states = await poll(
            lambda: demo_states(ha),
            lambda found: {s["entity_id"].split(".")[0] for s in found} >= set(COMMANDABLE),
            120, lambda found: f"the scooters' lock, button and number (have "
                               f"{sorted(s['entity_id'] for s in found)})", interval=0.5)
        assert {s["entity_id"] for s in states} >= {"lock.scooter_001_lock",
                                                    "lock.scooter_002_lock"}
        lock = "lock.scooter_001_lock"

        def lock_is(state: str) -> Callable[[list[dict[str, Any]]], bool]:
            return lambda found: any(s["entity_id"] == lock and s["state"] == state
                                     for s in found)

        # available first: Home Assistant ignores a service call on an unavailable entity
        await poll(lambda: demo_states(ha), lock_is("locked"), 60, lambda _: f"{lock} locked",
                   interval=0.5)
        async with httpx.AsyncClient(base_url=ha.url, headers=ha.headers(), timeout=30) as http:
            (await http.post("/api/services/lock/unlock", json={"entity_id": lock})
             ).raise_for_status()
        await poll(lambda: demo_states(ha), lock_is("unlocked"), 60,
                   lambda _: f"{lock} unlocked", interval=0.5)
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(demo.communicate(), 60)
    assert demo.returncode == 0
    assert err == b""

    clean = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "bridge", "demo", "--home-assistant", local.address, "--clean",
        env=bridge_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(clean.communicate(), 60)
    assert out.decode().startswith("cleared ")
    assert clean.returncode == 0, err.decode()
    await poll(lambda: demo_states(ha), lambda found: found == [], 60,
               lambda found: f"the demo's entities gone (left {[s['entity_id'] for s in found]})",
               interval=0.5)
