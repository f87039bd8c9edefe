"""Home Assistant as the tests look at it: its REST and WebSocket APIs (states, services,
templates, device triggers, automations), its registries on disk, and the MQTT warnings and
errors in its log. Used with a `support.homeassistant_harness.HomeAssistant`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx

from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from support.helpers import poll
from support.homeassistant_harness import HomeAssistant, add_mqtt, onboard, wait_api


@contextlib.asynccontextmanager
async def simulated_scooters(upstream: mosquitto.Broker, devices: int
                             ) -> AsyncIterator[tuple[Simulator, Responder]]:
    """The simulator's scooters (seed 7) on `upstream`, with flespi's REST responder."""
    sim = Simulator(upstream.host, upstream.port, devices=devices, seed=7)
    await sim.start()
    responder = Responder(sim)
    await responder.attach()
    try:
        yield sim, responder
    finally:
        await responder.close()
        await sim.stop()


async def start_homeassistant(ha: HomeAssistant, broker: mosquitto.Broker) -> None:
    """Start it, onboard the owner, add the MQTT integration on `broker`."""
    ha.start()
    await wait_api(ha)
    await onboard(ha)
    await add_mqtt(ha, broker.host, broker.port)


class Api:
    def __init__(self, ha: HomeAssistant) -> None:
        self.ha = ha

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.ha.url, headers=self.ha.headers(), timeout=30)

    async def state(self, entity_id: str) -> dict[str, Any] | None:
        async with self.client() as http:
            response = await http.get(f"/api/states/{entity_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def template(self, template: str) -> str:
        async with self.client() as http:
            response = await http.post("/api/template", json={"template": template})
        response.raise_for_status()
        return response.text

    async def call(self, domain: str, service: str, **data: Any) -> None:
        async with self.client() as http:
            response = await http.post(f"/api/services/{domain}/{service}", json=data)
        response.raise_for_status()

    async def wait_state(self, entity_id: str, predicate: Callable[[dict[str, Any] | None], bool],
                         timeout: float = 30, what: str = "") -> dict[str, Any] | None:
        """Poll /api/states (a child process has no event to wait on)."""
        return await poll(lambda: self.state(entity_id), predicate, timeout,
                          lambda last: f"{entity_id} {what} (last: {last})", interval=0.2)

    async def ws(self, message: dict[str, Any]) -> Any:
        """One command over Home Assistant's WebSocket API (what the UI's editors use):
        its `result`, or AssertionError with its error."""
        assert self.ha.token is not None
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"{self.ha.url}/api/websocket", timeout=aiohttp.ClientWSTimeout(ws_close=30)
        ) as ws:
            assert (await ws.receive_json(timeout=30))["type"] == "auth_required"
            await ws.send_json({"type": "auth", "access_token": self.ha.token})
            assert (await ws.receive_json(timeout=30))["type"] == "auth_ok"
            await ws.send_json({"id": 1, **message})
            while True:
                answer = await ws.receive_json(timeout=60)
                if answer.get("id") == 1 and answer.get("type") == "result":
                    break
        assert answer["success"], f"{message['type']}: {answer.get('error')}"
        return answer["result"]

    async def device_triggers(self, device_id: str) -> list[dict[str, Any]]:
        """The triggers the automation editor offers under a device."""
        found: list[dict[str, Any]] = await self.ws(
            {"type": "device_automation/trigger/list", "device_id": device_id})
        return found

    async def add_automation(self, key: str, config: dict[str, Any]) -> None:
        """Save an automation as the UI's editor does (automations.yaml, then a reload)."""
        async with self.client() as http:
            response = await http.post(f"/api/config/automation/config/{key}",
                                       json={"id": key, "alias": key, "mode": "queued",
                                             **config})
        response.raise_for_status()


def mqtt_entities(ha: HomeAssistant) -> dict[str, dict[str, Any]]:
    """The entity registry on disk: unique_id -> entry, for the MQTT platform."""
    registry = ha.storage("core.entity_registry")
    if registry is None:
        return {}
    entries = [e for e in registry["data"]["entities"] if e["platform"] == "mqtt"]
    uids = [e["unique_id"] for e in entries]
    assert len(uids) == len(set(uids)), f"duplicate unique_ids in the registry: {uids}"
    return {e["unique_id"]: e for e in entries}


def devices_by_identifier(ha: HomeAssistant) -> dict[str, dict[str, Any]]:
    registry = ha.storage("core.device_registry")
    if registry is None:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for device in registry["data"]["devices"]:
        for domain, identifier in device["identifiers"]:
            if domain == "mqtt":
                assert identifier not in found, f"two devices with identifier {identifier}"
                found[identifier] = device
    return found


PROBLEM = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) \([^)]*\) \[([^\]]*)\] (.*)$")


def mqtt_problems(ha: HomeAssistant, allowed: tuple[str, ...] = ()) -> list[str]:
    """Warnings and errors of Home Assistant's MQTT integration, and of the templates the
    bridge's discovery configs hold; `allowed`: the texts of expected ones (documented)."""
    found = []
    for line in ha.log().splitlines():
        match = PROBLEM.match(line)
        if match and ("mqtt" in match.group(2) or "value_json" in match.group(3)
                      or "flespi" in match.group(3)) \
                and not any(text in match.group(3) for text in allowed):
            found.append(line)
    return found


async def wait_until_async(get: Callable[[], Any], predicate: Callable[[Any], bool],
                           timeout: float = 30, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await get()
        if predicate(value):
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                                 f"(last: {value!r})")
        await asyncio.sleep(0.2)
