"""Device events in Home Assistant: a flespi parameter whose reported values are events
(`Attribute.events`: a panic button pressed, a crash detected, the ignition turned on) is an
`event` entity and one MQTT device trigger per event type, so automations fire on it from
the automation editor, under the device. Built from the parameter table (data, no I/O).

What the bridge publishes for one: `<base>/<id>/<attribute>/event`, never retained (a
replayed event would fire again whenever Home Assistant subscribes), `{"event_type": ...,
"value": ..., "time": ...}`, once per report of an event value newer than the bridge's start
(`event_payload`): flespi replays the last value of every parameter when the bridge
connects, and a panic button pressed last week is not an event now.
"""

from __future__ import annotations

from typing import Any

import orjson

from bridge.core.store import Device, iso
from bridge.homeassistant.context import Context, Entity
from bridge.normalize.catalog import Attribute

EVENT_LEAF = "event"


def event_key(attr: Attribute) -> str:
    """The event entity's key: the attribute's own name when the event is all it is."""
    return attr.name if attr.component == "event" else f"{attr.name}_event"


def event_topic(ctx: Context, dev: Device, attr: Attribute) -> str:
    return f"{ctx.base}/{dev.id}/{attr.name}/{EVENT_LEAF}"


def event_entities(ctx: Context, dev: Device, attr: Attribute) -> list[Entity]:
    """The event entity of `attr`, and a device trigger per event type."""
    topic = event_topic(ctx, dev, attr)
    key = event_key(attr)
    types = list(dict.fromkeys(event_type for _, event_type in attr.events))
    cfg: dict[str, Any] = {"name": attr.label, "unique_id": f"flespi_{dev.id}_{key}",
                           "state_topic": topic, "event_types": types}
    if attr.component == "event":  # its own classes; a binary sensor's are not an event's
        for option, value in (("device_class", attr.device_class), ("icon", attr.icon)):
            if value is not None:
                cfg[option] = value
    if not attr.enabled_by_default:
        cfg["enabled_by_default"] = False
    out: list[Entity] = [("event", key, cfg)]
    for event_type in types:
        trigger = f"{attr.name}_{event_type}_trigger"
        out.append(("device_automation", trigger, {
            "automation_type": "trigger", "unique_id": f"flespi_{dev.id}_{trigger}",
            "topic": topic, "type": event_type, "subtype": attr.label,
            "payload": event_type, "value_template": "{{ value_json.event_type }}"}))
    return out


def event_payload(attr: Attribute, value: Any, stamp: float) -> bytes | None:
    """What `<base>/<id>/<attribute>/event` carries for a reported value; None when the
    value is no event (a panic button's `false`)."""
    for event_value, event_type in attr.events:
        if value == event_value and type(value) is type(event_value):
            return orjson.dumps({"event_type": event_type, "value": value,
                                 "time": iso(stamp)})
    return None
