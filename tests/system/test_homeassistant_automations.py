"""What Home Assistant users automate on, in a real Home Assistant (each pinned release): a
device event (a panic button) offered as a device trigger in the automation editor, a
refused command as a "Command result" event, and a lock that never shows the opposite
state between a command and the device's confirmation.

Automations are saved through Home Assistant's config API, as its editor does; each one
publishes what fired it on the local broker (`mqtt.publish`), where the test records it:
every lock state Home Assistant had, in order, with none missed between two polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.helpers import BridgeFactory, Recorder, make_settings, wait_until
from support.homeassistant_api import (
    Api,
    mqtt_entities,
    mqtt_problems,
    simulated_scooters,
    start_homeassistant,
)
from support.homeassistant_harness import HomeAssistant

from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(900)]

FIRED = "test/automation"  # what the automations publish
CONFIRM_TIMEOUT = 4  # commands.confirm_timeout of the bridge under test


@pytest.fixture
async def scooter(upstream: mosquitto.Broker) -> AsyncIterator[tuple[Simulator, Responder]]:
    async with simulated_scooters(upstream, 1) as both:
        yield both


def fired(rec: Recorder, prefix: str) -> list[str]:
    return [m.payload.decode() for m in rec.messages
            if m.topic == FIRED and m.payload.decode().startswith(prefix)]


async def test_automations_fire_on_device_events_and_command_results(
        homeassistant: HomeAssistant, upstream: mosquitto.Broker, local: mosquitto.Broker,
        scooter: tuple[Simulator, Responder], bridge_factory: BridgeFactory) -> None:
    ha = homeassistant
    sim, responder = scooter
    api = Api(ha)
    await start_homeassistant(ha, local)
    (dev,) = sim.devices.values()
    bridge = await bridge_factory(make_settings(upstream, local, commands={
        "profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE},
        "confirm_timeout": CONFIRM_TIMEOUT}))
    await asyncio.wait_for(bridge.loaded.wait(), 30)
    # The scooter's tracker has a panic button: reported released, then pressed.
    await sim.set_values(dev.id, {"panic.button.event": False})
    uid = f"flespi_{dev.id}_"
    await wait_until(lambda: {uid + "panic_button", uid + "command_result", uid + "lock"}
                     <= set(mqtt_entities(ha)), timeout=60, what="the entities registered")
    ids = {key: mqtt_entities(ha)[uid + key]["entity_id"]
           for key in ("panic_button", "command_result", "lock")}
    device_id = mqtt_entities(ha)[uid + "lock"]["device_id"]

    # The automation editor offers the panic button under the device.
    triggers = await api.device_triggers(device_id)
    panic = [t for t in triggers if t.get("domain") == "mqtt"
             and (t.get("type"), t.get("subtype")) == ("pressed", "Panic button")]
    assert len(panic) == 1, triggers
    def publish(payload: str) -> list[dict[str, Any]]:
        return [{"action": "mqtt.publish", "data": {"topic": FIRED, "payload": payload}}]

    await api.add_automation("panic", {
        "triggers": panic,
        "actions": publish("panic pressed")})
    await api.add_automation("command_failed", {
        "triggers": [{"trigger": "state", "entity_id": ids["command_result"]}],
        "conditions": [{"condition": "template", "value_template":
                        "{{ trigger.to_state.attributes.event_type in "
                        "['error', 'unconfirmed'] }}"}],
        "actions": publish("command {{ trigger.to_state.attributes.event_type }}: "
                           "{{ trigger.to_state.attributes.command }} "
                           "{{ trigger.to_state.attributes.code }}")})
    await api.add_automation("lock_states", {
        "triggers": [{"trigger": "state", "entity_id": ids["lock"]}],
        "actions": publish("lock {{ trigger.to_state.state }}")})
    for key in ("panic", "command_failed", "lock_states"):
        await api.wait_state(f"automation.{key}", lambda s: s is not None and s["state"] == "on",
                             what="loaded")

    async with Recorder(local, [FIRED]) as rec:
        # a press fires the automation once
        await sim.set_values(dev.id, {"panic.button.event": True})
        await rec.wait_for(lambda: fired(rec, "panic") or None, timeout=30,
                           what="the panic automation")
        state = await api.state(ids["panic_button"])
        assert state is not None
        assert state["attributes"]["event_type"] == "pressed"

        # a command flespi refuses fires the command automation, with the command's label
        responder.fail_next = (400, "device refused the command")
        await api.call("lock", "unlock", entity_id=ids["lock"])
        await rec.wait_for(lambda: fired(rec, "command") or None, timeout=30,
                           what="the command automation")
        assert fired(rec, "command") == ["command error: Lock flespi_error"]

        # an unlock the device confirms a while after flespi accepted it: unlocking until
        # then, never locked in between
        responder.report_after = 2.0
        await api.call("lock", "unlock", entity_id=ids["lock"])
        await rec.wait_for(lambda: fired(rec, "lock")[-1:] == ["lock unlocked"] or None,
                           timeout=30, what="unlocked")
        assert fired(rec, "lock") == ["lock unlocking", "lock unlocked"]
        result = await api.state(ids["command_result"])
        assert result is not None
        assert (result["attributes"]["event_type"], result["attributes"]["command"]) == (
            "ok", "Lock")

        # a lock the device never confirms: locking, then its reported state again, and
        # an `unconfirmed` result (the automation fires on it too)
        responder.report_after = None
        await api.call("lock", "lock", entity_id=ids["lock"])
        await rec.wait_for(lambda: fired(rec, "command unconfirmed") or None,
                           timeout=CONFIRM_TIMEOUT + 30, what="unconfirmed")
        await rec.wait_for(lambda: fired(rec, "lock")[-1:] == ["lock unlocked"] or None,
                           timeout=30, what="back to unlocked")
        assert fired(rec, "lock") == ["lock unlocking", "lock unlocked", "lock locking",
                                      "lock unlocked"]
        assert fired(rec, "panic") == ["panic pressed"]

    ha.stop()
    assert mqtt_problems(ha) == [], "MQTT warnings or errors in Home Assistant's log"

