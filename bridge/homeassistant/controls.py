"""Home Assistant entities of a device type's command profile: a lock, buttons and numbers
where users expect them (a lock among the main controls, buttons and numbers under
Configuration, device classes from `BUTTON_CLASSES` and `NUMBER_UNIT_CLASSES`), and two
entities of command results: the diagnostic "Last command" sensor and the "Command result"
event entity automations trigger on. Built from the profile alone (data, no I/O).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from bridge.config.profiles import CommandSpec
from bridge.core.store import Device
from bridge.homeassistant.context import Context

LAST_COMMAND = "last_command"
COMMAND_RESULT = "command_result"
RESULT_EVENTS = ("ok", "error", "unconfirmed")
# Where command entities sit in Home Assistant, by component: a button or a number changes
# how the device behaves (Configuration), a lock is a main control.
COMMAND_CATEGORY = {"button": "config", "number": "config"}
# A button's device class by a word of its key or command (`restart`, `reboot_device`).
BUTTON_CLASSES = {"restart": "restart", "reboot": "restart",
                  "identify": "identify", "beep": "identify", "locate": "identify"}
# A number's device class by its unit (Home Assistant's NumberDeviceClass units).
NUMBER_UNIT_CLASSES = {"s": "duration", "min": "duration", "h": "duration", "d": "duration",
                       "ms": "duration", "km/h": "speed", "V": "voltage", "°C": "temperature",
                       "m": "distance", "km": "distance"}
LOCK_STATES = {"state_locked": "LOCKED", "state_unlocked": "UNLOCKED",
               "state_locking": "LOCKING", "state_unlocking": "UNLOCKING"}


def command_entities(ctx: Context, dev: Device, profile: Mapping[str, CommandSpec]
                     ) -> list[tuple[str, str, dict[str, Any]]]:
    """lock/button/number entities for the device type's command profile, and the "Last
    command" sensor. A lock's state comes from telemetry (`state_attribute`), never from
    assuming the command worked, and shows a command in flight (`lock_state`); a number's
    from the device setting it changes (`setting`, see `setting_state`) or telemetry, so a
    refused command never leaves it showing the value Home Assistant sent."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for key, spec in profile.items():
        cfg: dict[str, Any] = {
            "name": spec.label or key.replace("_", " ").capitalize(),
            "command_topic": f"{ctx.base}/{dev.id}/{key}/set",
        }
        state = spec.state_attribute
        if spec.component == "lock":
            cfg.update(payload_lock="LOCK", payload_unlock="UNLOCK", optimistic=state is None)
            if state is not None:  # the bridge's lock state topic (`lock_state`)
                cfg.update(state_topic=f"{ctx.base}/{dev.id}/{key}/state", **LOCK_STATES)
        elif spec.component == "button":
            cfg["payload_press"] = "PRESS"
            if device_class := button_class(key, spec):
                cfg["device_class"] = device_class
        else:
            if spec.setting is not None:  # the bridge's setting state topic (`setting_state`)
                cfg["state_topic"] = f"{ctx.base}/{dev.id}/{key}/state"
            elif state is not None:
                cfg["state_topic"] = f"{ctx.base}/{dev.id}/" + (
                    "state" if ctx.uses_json else state)
            cfg.update(min=spec.min, max=spec.max, step=spec.step, mode="box",
                       optimistic="state_topic" not in cfg)
            if spec.unit:
                cfg["unit_of_measurement"] = spec.unit
                if spec.unit in NUMBER_UNIT_CLASSES:
                    cfg["device_class"] = NUMBER_UNIT_CLASSES[spec.unit]
            if state is not None and spec.setting is None and ctx.uses_json:
                cfg["value_template"] = f"{{{{ value_json.{state} }}}}"
        if spec.component in COMMAND_CATEGORY:
            cfg["entity_category"] = COMMAND_CATEGORY[spec.component]
        out.append((spec.component, key, cfg))
    if profile:
        labels = command_labels(profile)
        out.append(("sensor", LAST_COMMAND, last_command_sensor(ctx, dev, labels)))
        out.append(("event", COMMAND_RESULT, command_result_event(ctx, dev, labels)))
    return out


def command_labels(profile: Mapping[str, CommandSpec]) -> str:
    """A Jinja mapping of command keys to the labels their entities show."""
    return orjson.dumps({key: spec.label or key.replace("_", " ").capitalize()
                         for key, spec in profile.items()}).decode()


def button_class(key: str, spec: CommandSpec) -> str | None:
    """`restart` for a key or command that restarts the device (`BUTTON_CLASSES`)."""
    for word in re.split(r"[^a-z]+", f"{key} {spec.command}".lower()):
        if word in BUTTON_CLASSES:
            return BUTTON_CLASSES[word]
    return None


# A result's event type: `unconfirmed` (flespi accepted it, the device's telemetry did not
# confirm it in time) is an error result with that code.
RESULT_TYPE = ("('unconfirmed' if value_json.code == 'unconfirmed' "
               "else value_json.status)")


def last_command_sensor(ctx: Context, dev: Device, labels: str) -> dict[str, Any]:
    """The latest command result (retained `<base>/<id>/last_command`): `ok`, `error` or
    `unconfirmed` as the state; the command's label, code, error, time and transaction as
    attributes (the time tells two identical results apart). Available with the bridge,
    whether or not the device is connected (a timeout is worth seeing)."""
    topic = f"{ctx.base}/{dev.id}/{LAST_COMMAND}"
    fields = ", ".join(f"'{f}': value_json.get('{f}')"
                       for f in ("code", "error", "time", "transaction"))
    return {"name": "Last command", "availability": [{"topic": ctx.bridge_state}],
            "state_topic": topic, "value_template": "{{ " + RESULT_TYPE + " }}",
            "json_attributes_topic": topic,
            "json_attributes_template": "{{ {'command': " + labels
            + ".get(value_json.command, value_json.command), " + fields + "} | tojson }}",
            "entity_category": "diagnostic", "icon": "mdi:console-line"}


def command_result_event(ctx: Context, dev: Device, labels: str) -> dict[str, Any]:
    """Every command result (`<base>/<id>/result`, never retained: an event must not fire
    again when Home Assistant subscribes) as an event `ok`, `error` or `unconfirmed`, with
    the command's label, code and message: what automations trigger on."""
    return {"name": "Command result", "availability": [{"topic": ctx.bridge_state}],
            "state_topic": f"{ctx.base}/{dev.id}/result", "event_types": list(RESULT_EVENTS),
            "value_template": "{{ {'event_type': " + RESULT_TYPE + ", 'command': " + labels
            + ".get(value_json.command, value_json.command), 'code': value_json.code, "
            "'message': value_json.error} | tojson }}",
            "icon": "mdi:console-line"}
