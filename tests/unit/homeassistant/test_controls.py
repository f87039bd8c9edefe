"""Command entities where Home Assistant users expect them, from the profile alone."""

from __future__ import annotations

import jinja2
import orjson

from bridge.config.profiles import CommandSpec
from bridge.core.store import Device
from bridge.homeassistant.controls import command_entities
from bridge.homeassistant.payloads import Context
from bridge.sim.fleet import SCOOTER_PROFILE

PROFILE = {key: CommandSpec.model_validate(spec) for key, spec in SCOOTER_PROFILE.items()}


def by_key() -> dict[str, tuple[str, dict[str, object]]]:
    return {key: (component, cfg) for component, key, cfg
            in command_entities(Context("homeassistant", "flespi"), Device(7), PROFILE)}


def test_buttons_and_numbers_sit_under_configuration_with_classes() -> None:
    entities = by_key()
    assert entities["lock"][1].get("entity_category") is None  # a main control
    assert (entities["restart"][0], entities["restart"][1]["device_class"],
            entities["restart"][1]["entity_category"]) == ("button", "restart", "config")
    interval = entities["upload_interval"][1]
    assert (interval["device_class"], interval["unit_of_measurement"],
            interval["entity_category"]) == ("duration", "s", "config")


def test_a_button_without_a_restart_word_has_no_class() -> None:
    profile = {"horn": CommandSpec(component="button", command="custom.horn")}
    ((_, _, cfg), *_) = command_entities(Context("homeassistant", "flespi"), Device(7), profile)
    assert "device_class" not in cfg


def test_command_results_render_label_and_type() -> None:
    entities = by_key()
    event = entities["command_result"][1]
    assert event["state_topic"] == "flespi/7/result"
    assert event["event_types"] == ["ok", "error", "unconfirmed"]
    result = {"transaction": None, "command": "upload_interval", "status": "error",
              "code": "unconfirmed", "error": "not confirmed", "response": None}
    rendered = orjson.loads(jinja2.Template(str(event["value_template"])).render(
        value_json=result))
    assert rendered == {"event_type": "unconfirmed", "command": "Report interval",
                        "code": "unconfirmed", "message": "not confirmed"}
    sensor = entities["last_command"][1]
    result = {**result, "command": "lock", "code": "flespi_error", "time": "2026-12-07T23:00:00Z"}
    assert jinja2.Template(str(sensor["value_template"])).render(value_json=result) == "error"
    attrs = orjson.loads(jinja2.Template(str(sensor["json_attributes_template"])).render(
        value_json=result))
    assert (attrs["command"], attrs["time"]) == ("Lock", "2026-12-07T23:00:00Z")
